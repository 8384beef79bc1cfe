// One training run, live: status, progress and time left, interactive loss curves from the
// metrics history, the score distribution, config and provenance; cancel with `runs:write`.

import { apiUrl, get, post } from "../api.js";
import { every } from "../router.js";
import { me } from "../session.js";
import { duration, el, facts, problemBox, statusBadge, when } from "../ui.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function render(main, { params: [id] }) {
  const header = el("div");
  const curves = el("section", { "aria-label": "Loss curves" });
  const details = el("section");
  main.append(el("h1", {}, `Training run #${id}`), header, el("h2", {}, "Loss terms per epoch"), curves, details);
  let chart = null;
  let shown = null;
  const refresh = async () => {
    const run = await get(`/training-runs/${id}`, {}, { authenticated: false });
    header.replaceChildren(summary(run));
    if (!shown || shown.status !== run.status || shown.epoch !== run.epoch) {
      const history = await get(`/training-runs/${id}/metrics`, {}, { authenticated: false });
      chart = drawCurves(curves, history, chart, FINAL.has(run.status));
    }
    if (!shown || shown.status !== run.status) details.replaceChildren(...more(run));
    shown = run;
    return FINAL.has(run.status);
  };
  let finished = await refresh();
  every(1.5, async () => {
    if (finished) return;
    try {
      finished = await refresh();
    } catch (error) {
      header.append(problemBox(error));
    }
  });
}

function summary(run) {
  const parts = [
    el("p", {}, statusBadge(run.status), ` · ${run.trigger} · ${(run.criteria || ["every criterion"]).join(", ")} · ${run.solver}`),
    el("p", {}, el("progress", { max: 1, value: run.progress, "aria-label": "progress" }),
      ` ${Math.round(run.progress * 100)} % · epoch ${run.epoch} of ${run.max_epochs || "?"}`
      + (run.current_criterion ? ` (${run.current_criterion})` : "")
      + (run.status === "running" ? ` · about ${duration(run.eta_seconds)} left` : "")),
  ];
  if (run.error) parts.push(el("div", { class: "problem", role: "alert" }, el("strong", {}, "The run failed"), run.error));
  if (me() && !FINAL.has(run.status)) {
    const result = el("span");
    parts.push(el("p", {}, el("button", { type: "button", class: "danger", disabled: run.cancel_requested, onclick: async () => {
      try {
        await post(`/training-runs/${run.id}/cancel`);
      } catch (error) {
        result.replaceChildren(problemBox(error));
      }
    } }, run.cancel_requested ? "Cancelling…" : "Cancel this run"), result));
  }
  return el("div", {}, parts);
}

function more(run) {
  const parts = [
    el("h2", {}, "Provenance"),
    facts([
      ["Created", when(run.created_at)], ["Started", when(run.started_at)], ["Finished", when(run.finished_at)],
      ["Comparisons", run.n_comparisons], ["Data fingerprint", run.data_fingerprint], ["Config hash", run.config_hash],
      ["Code version", run.code_version], ["Attempt", run.attempt], ["Warm start", run.warm_start ? "yes" : "no"],
    ]),
    el("h2", {}, "Settings"),
    el("pre", {}, JSON.stringify(run.config, null, 2)),
  ];
  if (run.status === "succeeded") {
    parts.push(el("h2", {}, "Score distribution"),
      el("img", { class: "plot", src: apiUrl(`/training-runs/${run.id}/plots/scores.png`), alt: `Distribution of the global scores of run ${run.id}`, loading: "lazy" }));
  }
  return parts;
}

// One uPlot chart per criterion: each loss term of the history against the epoch.
function drawCurves(container, history, previous, finished) {
  if (!history.items.length) {
    // A warm start already at the converged solver's tolerance trains no iteration at all.
    const note = finished ? "No epoch was trained: the run started at its optimum (a warm start from converged scores)." : "No epoch recorded yet.";
    container.replaceChildren(el("p", { class: "muted" }, note));
    return null;
  }
  if (previous) for (const plot of previous) plot.destroy();
  container.replaceChildren();
  const byCriterion = new Map();
  for (const item of history.items) {
    if (!byCriterion.has(item.criterion)) byCriterion.set(item.criterion, []);
    byCriterion.get(item.criterion).push(item);
  }
  const plots = [];
  for (const [criterion, items] of byCriterion) {
    // Wall-clock time is not a loss term: it would flatten the curves on a shared axis.
    const names = [...new Set(items.flatMap((item) => Object.keys(item.values)))].filter((name) => name !== "elapsed").sort();
    const data = [items.map((item) => item.epoch), ...names.map((name) => items.map((item) => item.values[name] ?? null))];
    const box = el("div", { class: "chart", role: "img", "aria-label": `Loss terms of ${criterion} over ${items.length} epochs: ${names.join(", ")}` });
    container.append(el("h3", {}, criterion), box);
    const width = Math.max(280, Math.min(900, container.clientWidth || 600));
    if (typeof window.uPlot !== "function") {
      box.append(el("p", { class: "muted" }, "Charts could not load."));
      continue;
    }
    const colours = ["#0b57d0", "#b3261e", "#146c2e", "#8e24aa", "#e37400", "#00796b", "#5f6368"];
    plots.push(new window.uPlot({
      width, height: 260,
      scales: { x: { time: false } },
      axes: [{ label: "epoch" }, {}],
      series: [{ label: "epoch" }, ...names.map((name, i) => ({ label: name, stroke: colours[i % colours.length], width: 1.5 }))],
    }, data, box));
  }
  return plots;
}
