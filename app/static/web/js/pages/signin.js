// Sign in with a user API key or a token from the deployment's identity provider; the page keeps
// it in this browser only. `#/signin?credential=…` (printed by `licchavi serve --demo`) signs in
// at once and drops the credential from the address bar.

import { navigate, identityChanged } from "../router.js";
import { signIn } from "../session.js";
import { el, notice, problemBox } from "../ui.js";

export async function render(main, { query }) {
  main.append(el("h1", {}, "Sign in"));
  const given = query.get("credential");
  const result = el("div", { "aria-live": "polite" });
  const attempt = async (value) => {
    try {
      const user = await signIn(value);
      identityChanged();
      notice(`Signed in as ${user.user_id || "a service key"}.`);
      window.history.replaceState(null, "", "#/compare");
      navigate("#/compare");
    } catch (error) {
      result.replaceChildren(problemBox(error));
    }
  };
  if (given) {
    window.history.replaceState(null, "", "#/signin");
    await attempt(given);
    return;
  }
  main.append(
    el("p", {}, "Paste a user API key (", el("code", {}, "licchavi api-key create --user NAME …"),
      ") or a token from your identity provider. It stays in this browser; reading rankings needs none."),
    el("form", { onsubmit: (event) => { event.preventDefault(); attempt(new FormData(event.target).get("credential")); } },
      el("label", {}, "API key or token", el("input", { name: "credential", type: "password", required: true, autocomplete: "off", size: 60 })),
      el("div", { class: "toolbar" }, el("button", { type: "submit", class: "primary" }, "Sign in"))),
    result);
}
