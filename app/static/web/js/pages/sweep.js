// One sweep, live: progress, the leaderboard (mean and interval), the trials with the filter
// language, the plots, comparing two trials, and pause/resume/cancel/rerun/promote buttons.

import { ApiProblem, apiUrl, get, post } from "../api.js";
import { every, navigate } from "../router.js";
import { me } from "../session.js";
import { el, facts, intervalBar, notice, number, problemBox, statusBadge, table, when } from "../ui.js";

const FINAL = new Set(["completed", "failed", "cancelled"]);
const PLOTS = [["loss-curves", "Loss curves"], ["parallel-coordinates", "Parallel coordinates"], ["importances", "Parameter importances"]];

export async function render(main, { params: [id], query }) {
  const head = el("section", { "aria-live": "polite" });
  const board = el("section");
  const trials = el("section");
  const plots = el("section");
  main.append(el("h1", {}, `Sweep #${id}`), head, el("h2", {}, "Leaderboard"), board, el("h2", {}, "Trials"), trials, el("h2", {}, "Plots"), plots);
  let sweep = await get(`/sweeps/${id}`, {}, { authenticated: false });
  const redraw = async () => {
    head.replaceChildren(summary(sweep));
    board.replaceChildren(await leaderboard(id));
    trials.replaceChildren(await trialTable(id, query));
    // Plots need finished trials to draw (the API answers 404 until then); importances need a
    // few more, to tell the parameters apart.
    const succeeded = (sweep.progress && sweep.progress.trials.succeeded) || 0;
    const drawable = PLOTS.filter(([name]) => succeeded >= (name === "importances" ? 3 : 2));
    if (!FINAL.has(sweep.status) || !drawable.length) {
      plots.replaceChildren(el("p", { class: "muted" }, "The plots appear once the sweep has finished trials to compare."));
    } else if (!plots.querySelector("img")) {
      plots.replaceChildren(...drawable.map(([name, title]) => el("figure", {},
        el("img", { class: "plot", src: apiUrl(`/sweeps/${id}/plots/${name}.png`), alt: `${title} of sweep ${id}`, loading: "lazy" }),
        el("figcaption", { class: "muted" }, title))));
    }
  };
  await redraw();
  every(3, async () => {
    if (FINAL.has(sweep.status)) return;
    try {
      sweep = await get(`/sweeps/${id}`, {}, { authenticated: false });
      await redraw();
    } catch (error) {
      head.append(problemBox(error));
    }
  });
}

function summary(sweep) {
  const progress = sweep.progress || { trials: {}, evaluations: {} };
  const done = (counts) => ["succeeded", "failed", "cancelled", "pruned"].reduce((n, s) => n + (counts[s] || 0), 0);
  const total = (counts) => Object.values(counts).reduce((n, v) => n + v, 0);
  const evaluations = total(progress.evaluations);
  const parts = [
    el("p", {}, statusBadge(sweep.status), ` · ${sweep.name} · ${sweep.method} · objective ${sweep.objective_metric} (${sweep.direction})`),
    el("p", {}, el("progress", { max: Math.max(1, evaluations), value: done(progress.evaluations), "aria-label": "evaluations done" }),
      ` ${done(progress.evaluations)} of ${evaluations} evaluations, ${done(progress.trials)} of ${total(progress.trials)} trials`),
    facts([["Created", when(sweep.created_at)], ["Finished", when(sweep.finished_at)], ["Data fingerprint", sweep.data_fingerprint], ["Spec hash", sweep.spec_hash]]),
  ];
  if (sweep.error) parts.push(el("div", { class: "problem", role: "alert" }, el("strong", {}, "The sweep failed"), sweep.error));
  if (me()) parts.push(controls(sweep));
  return el("div", {}, parts);
}

function controls(sweep) {
  const result = el("div", { "aria-live": "polite" });
  const act = (path, body, message) => async () => {
    try {
      await post(`/sweeps/${sweep.id}/${path}`, body);
      notice(message);
      navigate(`#/sweeps/${sweep.id}?at=${Date.now()}`);
    } catch (error) {
      result.replaceChildren(problemBox(error));
    }
  };
  const running = !FINAL.has(sweep.status);
  return el("div", {}, el("div", { class: "toolbar" },
    running && sweep.status !== "paused" ? el("button", { type: "button", onclick: act("pause", undefined, "Sweep paused.") }, "Pause") : null,
    sweep.status === "paused" ? el("button", { type: "button", onclick: act("resume", undefined, "Sweep resumed.") }, "Resume") : null,
    running ? el("button", { type: "button", class: "danger", onclick: act("cancel", undefined, "Sweep cancelled.") }, "Cancel") : null,
    // The training defaults are service-wide: a user's credential cannot promote (a 403).
    me().user_id === null ? el("button", { type: "button", class: "primary", onclick: act("promote", {}, "The best trial's settings are now the training defaults.") }, "Promote the best trial") : null), result);
}

async function leaderboard(id) {
  let data;
  try {
    data = await get(`/sweeps/${id}/leaderboard`, { limit: 20 }, { authenticated: false });
  } catch (error) {
    return problemBox(error);
  }
  if (!data.items.length) return el("p", { class: "muted" }, "No trial has finished yet.");
  const values = data.items.flatMap((row) => [row.ci_low, row.ci_high, row.mean]).filter((v) => v !== null);
  const low = Math.min(...values);
  const high = Math.max(...values);
  return table(["Rank", "Trial", "Settings", `Mean ${data.metric}`, "Interval", "vs current"],
    data.items.map((row) => el("tr", {},
      el("td", { class: "num" }, row.rank),
      el("td", {}, `#${row.number}`),
      el("td", {}, el("code", {}, JSON.stringify(row.params))),
      el("td", { class: "num" }, `${number(row.mean, 4)} [${number(row.ci_low, 4)}, ${number(row.ci_high, 4)}]`),
      el("td", { class: "interval" }, intervalBarFromBounds(row, low, high)),
      el("td", {}, row.vs_incumbent ? (row.vs_incumbent.better ? "better" : "not better") + (row.vs_incumbent.p_value !== null ? ` (p ${number(row.vs_incumbent.p_value, 3)})` : "") : "–"))),
    `Ranked by the ${data.direction === "maximize" ? "lower" : "upper"} end of the ${Math.round(data.confidence * 100)} % interval.`);
}

function intervalBarFromBounds(row, low, high) {
  const centre = row.mean;
  const half = Math.max(centre - (row.ci_low ?? centre), (row.ci_high ?? centre) - centre);
  return intervalBar(centre, half / 1.96, low - (high - low) * 0.05, high + (high - low) * 0.05, `trial ${row.number}: mean ${number(row.mean, 4)}`);
}

async function trialTable(id, query) {
  const filter = query.get("filter") || "";
  const sort = query.get("sort") || "-objective";
  const result = el("div", { "aria-live": "polite" });
  const form = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    navigate(`#/sweeps/${id}?${new URLSearchParams({ filter: data.get("filter"), sort: data.get("sort") })}`);
  } },
    el("label", {}, "Filter", el("input", { name: "filter", value: filter, size: 40, placeholder: "params.w >= 1 AND status = succeeded" })),
    el("label", {}, "Sort", el("input", { name: "sort", value: sort, size: 14 })),
    el("button", { type: "submit" }, "Apply"));
  let page;
  try {
    page = await get(`/sweeps/${id}/trials`, { filter, sort, limit: 100 }, { authenticated: false });
  } catch (error) {
    result.replaceChildren(problemBox(error));
    return el("div", {}, form, result);
  }
  const chosen = new Set();
  const compareButton = el("button", { type: "button", disabled: true, onclick: async () => {
    try {
      const difference = await get(`/sweeps/${id}/compare`, { trials: [...chosen].join(",") }, { authenticated: false });
      result.replaceChildren(el("h3", {}, "Comparison"), el("pre", {}, JSON.stringify(difference, null, 2)));
    } catch (error) {
      result.replaceChildren(problemBox(error));
    }
  } }, "Compare the two chosen trials");
  const rows = page.items.map((trial) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", "aria-label": `choose trial ${trial.number}`, onchange: (event) => {
      if (event.target.checked) chosen.add(trial.id); else chosen.delete(trial.id);
      compareButton.disabled = chosen.size !== 2;
    } })),
    el("td", {}, `#${trial.number}`),
    el("td", {}, statusBadge(trial.status)),
    el("td", {}, el("code", {}, JSON.stringify(trial.params))),
    el("td", { class: "num" }, number(trial.objective, 4)),
    el("td", {}, trial.tags.join(", ")),
    me() ? el("td", {}, el("button", { type: "button", onclick: async () => {
      try {
        await post(`/sweeps/${id}/trials/${trial.id}/rerun`, { overrides: {} });
        notice(`Trial #${trial.number} queued again.`);
      } catch (error) {
        result.replaceChildren(problemBox(error instanceof ApiProblem ? error : new Error(String(error))));
      }
    } }, "Rerun")) : null));
  const headers = ["", "Trial", "Status", "Settings", "Objective", "Tags"];
  if (me()) headers.push("");
  return el("div", {}, form, el("p", { class: "muted" }, `${page.total} trials.`), table(headers, rows), el("div", { class: "toolbar" }, compareButton), result);
}
