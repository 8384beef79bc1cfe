// Sweeps: the list, and a YAML editor that validates the spec as it is typed (the API's dry run
// gives the schema's errors with their JSON pointers, and the trials × evaluations it would run).

import { get, request } from "../api.js";
import { every, navigate } from "../router.js";
import { me } from "../session.js";
import { el, problemBox, statusBadge, table, when } from "../ui.js";

const EXAMPLE = `name: coupling weights
parameters:
  w: {values: [0.5, 1, 2]}
repeats: {seeds: [0, 1]}
evaluation: {kind: holdout, folds: 3, split_by: comparison}
objectives: [{metric: heldout_accuracy, direction: maximize}]
budget: {max_parallel: 2}
`;

export async function render(main) {
  main.append(el("h1", {}, "Sweeps"));
  if (me()) main.append(editor());
  const list = el("section", { "aria-live": "polite" });
  main.append(el("h2", {}, "All sweeps"), list);
  const refresh = async () => {
    try {
      const page = await get("/sweeps", { limit: 50 }, { authenticated: false });
      list.replaceChildren(page.items.length ? table(["Sweep", "Name", "Status", "Method", "Trials", "Created"],
        page.items.map((s) => el("tr", {},
          el("td", {}, el("a", { href: `#/sweeps/${s.id}` }, `#${s.id}`)),
          el("td", {}, s.name),
          el("td", {}, statusBadge(s.status)),
          el("td", {}, s.method),
          el("td", { class: "num" }, s.progress ? Object.values(s.progress.trials).reduce((x, y) => x + y, 0) : "–"),
          el("td", {}, when(s.created_at))))) : el("p", {}, "No sweep yet."));
    } catch (error) {
      list.replaceChildren(problemBox(error));
    }
  };
  await refresh();
  every(3, refresh);
}

function editor() {
  const textarea = el("textarea", { id: "spec", name: "spec", spellcheck: "false", "aria-describedby": "spec-check" });
  textarea.value = EXAMPLE;
  const check = el("div", { id: "spec-check", "aria-live": "polite" });
  const submit = el("button", { type: "submit", class: "primary" }, "Submit sweep");
  let timer = null;
  let latest = 0;
  const validate = async () => {
    const asked = ++latest;
    try {
      const plan = await request("POST", "/sweeps", { query: { dry_run: "true" }, raw: { text: textarea.value, type: "application/yaml" } });
      if (asked !== latest) return;
      check.replaceChildren(el("div", { class: "success" },
        `Valid: ${plan.n_trials} trial${plan.n_trials === 1 ? "" : "s"} × ${plan.units_per_trial} evaluation${plan.units_per_trial === 1 ? "" : "s"} = ${plan.n_evaluations} evaluations`
        + (plan.includes_baseline ? " (the current settings included as a baseline)." : ".")));
      submit.disabled = false;
    } catch (error) {
      if (asked !== latest) return;
      check.replaceChildren(problemBox(error));
      submit.disabled = true;
    }
  };
  textarea.addEventListener("input", () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(validate, 400);
  });
  const result = el("div", { "aria-live": "polite" });
  const form = el("form", { onsubmit: async (event) => {
    event.preventDefault();
    try {
      const sweep = await request("POST", "/sweeps", { raw: { text: textarea.value, type: "application/yaml" } });
      navigate(`#/sweeps/${sweep.id}`);
    } catch (error) {
      result.replaceChildren(problemBox(error));
    }
  } },
    el("label", { for: "spec" }, "Sweep spec (YAML; ", el("a", { href: "/api/v1/sweeps/schema" }, "schema"), ")"),
    textarea, check, el("div", { class: "toolbar" }, submit), result);
  validate();
  return el("section", { "aria-label": "New sweep" }, el("h2", {}, "New sweep"), form);
}
