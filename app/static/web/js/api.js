// The public API as the page uses it: JSON in and out, the signed-in credential as a bearer
// token, and every error turned into the problem document the API answered (RFC 9457).

const PREFIX = "/api/v1";
const STORAGE_KEY = "licchavi.credential";

export class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || `HTTP ${problem.status}`);
    this.problem = problem;
  }
}

export function credential() {
  return window.localStorage.getItem(STORAGE_KEY);
}

export function setCredential(value) {
  if (value) window.localStorage.setItem(STORAGE_KEY, value);
  else window.localStorage.removeItem(STORAGE_KEY);
}

function url(path, query) {
  const target = new URL(PREFIX + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      const body = await response.json();
      return { status: response.status, title: body.title || response.statusText, ...body };
    } catch (_) {
      // not JSON after all: fall through to the status line
    }
  }
  return { status: response.status, title: response.statusText || `HTTP ${response.status}`, detail: "" };
}

// `body` is sent as JSON unless `raw` is given ({text, type}); `authenticated: false` sends no
// credential (public reads stay anonymous, so a stale key cannot break them).
export async function request(method, path, { query, body, raw, authenticated = true } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const token = authenticated ? credential() : null;
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (raw) {
    headers["Content-Type"] = raw.type;
    payload = raw.text;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), { method, headers, body: payload });
  } catch (error) {
    throw new ApiProblem({ status: 0, title: "The service cannot be reached", detail: String(error.message || error) });
  }
  if (!response.ok) throw new ApiProblem(await problemOf(response));
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, query, options = {}) => request("GET", path, { query, ...options });
export const post = (path, body, options = {}) => request("POST", path, { body, ...options });
export const del = (path, options = {}) => request("DELETE", path, options);
export const patch = (path, body, options = {}) => request("PATCH", path, { body, ...options });

export function apiUrl(path, query) {
  return url(path, query).toString();
}
