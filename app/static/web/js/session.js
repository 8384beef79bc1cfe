// Who is signed in: a pasted user API key or a token from the deployment's identity provider,
// checked with GET /api/v1/me, which says the user and the scopes it grants.

import { credential, get, setCredential } from "./api.js";

let current = null; // {user_id, scopes, kind} once checked; null when signed out

export function me() {
  return current;
}

export function can(scope) {
  return Boolean(current && (current.scopes.includes(scope) || current.scopes.includes("admin")));
}

export async function restore() {
  if (!credential()) return null;
  try {
    current = await get("/me");
  } catch (_) {
    current = null; // a revoked or expired credential: the page offers to sign in again
  }
  return current;
}

export async function signIn(value) {
  setCredential(value.trim());
  try {
    current = await get("/me");
  } catch (error) {
    setCredential(null);
    current = null;
    throw error;
  }
  return current;
}

export function signOut() {
  setCredential(null);
  current = null;
}
