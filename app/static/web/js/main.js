// The app's shell: routes (#/path?query) to pages, the signed-in user in the header, and
// clean-up of a page's timers when another one is shown.

import { el, problemBox } from "./ui.js";
import { leave, setIdentityHook } from "./router.js";
import { me, restore, signOut } from "./session.js";
import * as rankings from "./pages/rankings.js";
import * as video from "./pages/video.js";
import * as compare from "./pages/compare.js";
import * as myScores from "./pages/my_scores.js";
import * as runs from "./pages/runs.js";
import * as run from "./pages/run.js";
import * as sweeps from "./pages/sweeps.js";
import * as sweep from "./pages/sweep.js";
import * as signin from "./pages/signin.js";

const ROUTES = [
  [/^\/?$/, rankings, "Rankings"],
  [/^\/videos\/(.+)$/, video, "Video"],
  [/^\/compare$/, compare, "Compare"],
  [/^\/me$/, myScores, "My scores"],
  [/^\/runs$/, runs, "Runs"],
  [/^\/runs\/(\d+)$/, run, "Run"],
  [/^\/sweeps$/, sweeps, "Sweeps"],
  [/^\/sweeps\/(\d+)$/, sweep, "Sweep"],
  [/^\/signin$/, signin, "Sign in"],
];

function parse() {
  const raw = window.location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  return { path, query: new URLSearchParams(query) };
}

function renderIdentity() {
  const box = document.getElementById("identity");
  const user = me();
  if (user) {
    box.replaceChildren(
      el("span", { class: "muted" }, "Signed in as ", el("strong", {}, user.user_id || "a service key")),
      el("button", { type: "button", onclick: () => { signOut(); renderIdentity(); show(); } }, "Sign out"));
  } else {
    box.replaceChildren(el("a", { href: "#/signin" }, "Sign in"));
  }
}

async function show() {
  leave();
  const { path, query } = parse();
  const main = document.getElementById("main");
  document.getElementById("notice").replaceChildren();
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("href").slice(1);
    const active = target === "/" ? path === "/" || path.startsWith("/videos/") : path.startsWith(target);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const [pattern, page, title] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    document.title = `${title} · Licchavi`;
    main.replaceChildren();
    try {
      await page.render(main, { params: match.slice(1).map(decodeURIComponent), query });
    } catch (error) {
      main.append(problemBox(error));
    }
    return;
  }
  document.title = "Not found · Licchavi";
  main.replaceChildren(el("h1", {}, "Not found"), el("p", {}, "No page here. ", el("a", { href: "#/" }, "See the rankings.")));
}

async function start() {
  await restore();
  setIdentityHook(renderIdentity);
  renderIdentity();
  window.addEventListener("hashchange", show);
  await show();
}

start();
