// Training runs: newest first with status, progress and time left, updated live; a signed-in
// user with `runs:write` can start one.

import { get, post } from "../api.js";
import { every, navigate } from "../router.js";
import { me } from "../session.js";
import { duration, el, problemBox, statusBadge, table, when } from "../ui.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];

export async function render(main, { query }) {
  const status = query.get("status") || "";
  const offset = Math.max(0, Number(query.get("offset") || 0));
  main.append(el("h1", {}, "Training runs"));
  // Shown to anyone signed in: the API decides, and its refusal is shown as its problem.
  if (me()) main.append(await starter());
  main.append(el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    navigate(`#/runs?status=${new FormData(event.target).get("status")}`);
  } },
    el("label", {}, "Status", el("select", { name: "status" }, STATUSES.map((s) =>
      el("option", { value: s, selected: s === status }, s || "any")))),
    el("button", { type: "submit" }, "Show")));
  const list = el("section", { "aria-live": "polite" });
  main.append(list);
  const refresh = async () => {
    try {
      const page = await get("/training-runs", { status, limit: 50, offset }, { authenticated: false });
      list.replaceChildren(runsTable(page, status, offset));
    } catch (error) {
      list.replaceChildren(problemBox(error));
    }
  };
  await refresh();
  every(2, refresh);
}

function runsTable(page, status, offset) {
  if (!page.items.length) return el("p", {}, "No run yet.");
  const rows = page.items.map((run) => el("tr", {},
    el("td", {}, el("a", { href: `#/runs/${run.id}` }, `#${run.id}`)),
    el("td", {}, statusBadge(run.status)),
    el("td", { class: "hide-narrow" }, run.trigger),
    el("td", {}, (run.criteria || ["all"]).join(", ")),
    el("td", {}, el("progress", { max: 1, value: run.progress, "aria-label": `run ${run.id} progress` }),
      ` ${Math.round(run.progress * 100)} %`),
    el("td", { class: "hide-narrow" }, run.status === "running" ? duration(run.eta_seconds) : "–"),
    el("td", { class: "hide-narrow" }, when(run.created_at))));
  const pager = el("nav", { class: "pager", "aria-label": "Pages" },
    el("button", { type: "button", disabled: offset === 0, onclick: () => navigate(`#/runs?status=${status}&offset=${Math.max(0, offset - 50)}`) }, "Newer"),
    el("span", {}, `${offset + 1}–${offset + page.items.length} of ${page.total}`),
    el("button", { type: "button", disabled: offset + page.items.length >= page.total, onclick: () => navigate(`#/runs?status=${status}&offset=${offset + 50}`) }, "Older"));
  return el("div", {}, table(["Run", "Status",
    el("th", { scope: "col", class: "hide-narrow" }, "Trigger"), "Criteria", "Progress",
    el("th", { scope: "col", class: "hide-narrow" }, "Time left"),
    el("th", { scope: "col", class: "hide-narrow" }, "Created")], rows), pager);
}

async function starter() {
  const criteria = await get("/criteria", {}, { authenticated: false });
  const result = el("div", { "aria-live": "polite" });
  const form = el("form", { class: "filters", onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    const body = { solver: data.get("solver") || undefined, warm_start: data.get("warm_start") === "on" };
    if (data.get("criterion")) body.criteria = [data.get("criterion")];
    try {
      const run = await post("/training-runs", body);
      navigate(`#/runs/${run.id}`);
    } catch (error) {
      result.replaceChildren(problemBox(error));
    }
  } },
    el("label", {}, "Criterion", el("select", { name: "criterion" },
      el("option", { value: "" }, "every criterion"),
      criteria.map((c) => el("option", { value: c.name }, c.label || c.name)))),
    el("label", {}, "Solver", el("select", { name: "solver" },
      el("option", { value: "" }, "default"), el("option", { value: "faithful" }, "faithful"), el("option", { value: "converged" }, "converged"))),
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "warm_start", checked: true }), "Warm start from the published state"),
    el("button", { type: "submit", class: "primary" }, "Start a run"));
  return el("section", { "aria-label": "Start a run" }, form, result);
}
