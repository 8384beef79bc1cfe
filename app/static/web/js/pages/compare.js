// Compare two videos: one slider per criterion on −10…10 (main criterion first), the stored
// values when the pair was compared before, delete, and — after submitting — the moment the
// auto run that includes the comparison publishes fresh scores.

import { ApiProblem, del, get, post } from "../api.js";
import { every, navigate } from "../router.js";
import { can, me } from "../session.js";
import { el, notice, number, problemBox } from "../ui.js";

const MAX = 10;

export async function render(main, { query }) {
  main.append(el("h1", {}, "Compare two videos"));
  const user = me();
  if (!user || !user.user_id || !can("comparisons:write")) {
    main.append(el("p", {}, "Comparing needs a signed-in user whose credential may write comparisons. ",
      el("a", { href: "#/signin" }, "Sign in")));
    return;
  }
  const criteria = await get("/criteria", {}, { authenticated: false });
  criteria.sort((x, y) => Number(y.is_main) - Number(x.is_main) || x.name.localeCompare(y.name));
  const a = query.get("a") || "";
  const b = query.get("b") || "";

  const picker = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    navigate(`#/compare?${new URLSearchParams({ a: data.get("a").trim(), b: data.get("b").trim() })}`);
  } },
    el("label", {}, "Video A", el("input", { name: "a", value: a, required: true, autocomplete: "off" })),
    el("label", {}, "Video B", el("input", { name: "b", value: b, required: true, autocomplete: "off" })),
    el("button", { type: "submit" }, "Compare these"),
    el("button", { type: "button", onclick: () => suggest(user, picker) }, "Suggest a pair"));
  const area = el("section", { "aria-live": "polite" });
  main.append(picker, area);
  if (!a || !b) {
    area.append(el("p", { class: "muted" }, "Type two video ids, or let the service suggest the pair you compared least."));
    return;
  }
  if (a === b) {
    area.append(problemBox(new ApiProblem({ title: "Two different videos are needed", detail: "Video A and video B are the same." })));
    return;
  }
  // The pair's stored scores, read from the list (a missing pair is an empty list, not a 404),
  // turned to the order asked: a stored score favours its video_b when positive.
  let stored = [];
  try {
    const listed = await get("/comparisons", { user_id: user.user_id, video_id: a, limit: 1000 }, { authenticated: false });
    stored = listed.items.filter((c) => (c.video_a === a && c.video_b === b) || (c.video_a === b && c.video_b === a))
      .map((c) => ({ ...c, score: c.video_a === a ? c.score : -c.score }));
  } catch (error) {
    area.append(problemBox(error));
  }
  const previous = new Map(stored.map((s) => [s.criterion, s]));
  const form = el("form", { onsubmit: (event) => submit(event, user, a, b, criteria, area) });
  form.append(el("div", { class: "pair" },
    el("div", { class: "card" }, el("h3", {}, "A"), el("a", { href: `#/videos/${encodeURIComponent(a)}` }, a)),
    el("div", { class: "card" }, el("h3", {}, "B"), el("a", { href: `#/videos/${encodeURIComponent(b)}` }, b))));
  for (const criterion of criteria) {
    const old = previous.get(criterion.name);
    const value = old ? Math.round((old.score / old.score_max) * MAX) : 0;
    const id = `score-${criterion.name}`;
    const include = criterion.is_main || Boolean(old);
    form.append(el("div", { class: "slider-row" },
      el("label", { for: id }, `${criterion.label || criterion.name}${criterion.is_main ? " (main criterion)" : ""}`),
      el("input", { id, name: criterion.name, type: "range", min: -MAX, max: MAX, step: 1, value,
        "aria-valuetext": describe(value), oninput: (event) => { event.target.setAttribute("aria-valuetext", describe(Number(event.target.value))); } }),
      el("div", { class: "slider-ends", "aria-hidden": "true" }, el("span", {}, "A is better"), el("span", {}, "equal"), el("span", {}, "B is better")),
      criterion.is_main ? null : el("label", { class: "muted" },
        el("input", { type: "checkbox", name: `use-${criterion.name}`, checked: include }), "Include this criterion")));
  }
  form.append(el("div", { class: "toolbar" },
    el("button", { type: "submit", class: "primary" }, stored.length ? "Update comparison" : "Submit comparison"),
    stored.length ? el("button", { type: "button", class: "danger", onclick: () => remove(user, a, b, area) }, "Delete comparison") : null));
  area.append(form);
}

function describe(value) {
  if (value === 0) return "0: the two are equal";
  return value < 0 ? `${value}: A is better` : `${value}: B is better`;
}

async function submit(event, user, a, b, criteria, area) {
  event.preventDefault();
  const data = new FormData(event.target);
  const scores = criteria
    .filter((c) => c.is_main || data.get(`use-${c.name}`))
    .map((c) => ({ criterion: c.name, score: Number(data.get(c.name)), score_max: MAX }));
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  const sent = new Date();
  try {
    await post("/comparisons", { user_id: user.user_id, video_a: a, video_b: b, criteria_scores: scores });
  } catch (error) {
    area.prepend(problemBox(error));
    button.disabled = false;
    return;
  }
  button.disabled = false;
  button.textContent = "Update comparison"; // the pair is stored now: another submit replaces it
  const main = criteria.find((c) => c.is_main) || criteria[0];
  const status = el("div", { class: "success", role: "status" }, "Saved. Waiting for the scores that include it…");
  area.prepend(status);
  waitForFreshScores(main.name, sent, a, b, status);
}

// The first auto run of the criterion that starts after the write reads it; once that run has
// published, the page shows the pair's fresh scores.
function waitForFreshScores(criterion, sent, a, b, status) {
  const deadline = Date.now() + 180000;
  const check = async () => {
    if (Date.now() > deadline) {
      status.textContent = "Saved. Fresh scores take longer than usual: see the Runs page.";
      return true;
    }
    const runs = await get("/training-runs", { criterion, limit: 10 }, { authenticated: false });
    const done = runs.items.find((r) => r.status === "succeeded" && r.started_at && new Date(r.started_at) >= sent);
    if (!done) return false;
    const [sa, sb] = await Promise.all([a, b].map((v) => get(`/videos/${encodeURIComponent(v)}/scores`, {}, { authenticated: false })));
    const score = (s) => {
      const found = s.scores.find((x) => x.criterion === criterion);
      return found ? number(found.display_score, 1) : "–";
    };
    status.replaceChildren(
      "Fresh scores published by ", el("a", { href: `#/runs/${done.id}` }, `run #${done.id}`),
      `: A ${score(sa)}, B ${score(sb)}.`);
    notice("Your comparison is in the published scores.");
    return true;
  };
  let finished = false;
  every(1.5, async () => {
    if (finished) return;
    try {
      finished = await check();
    } catch (_) {
      // a transient error: the next poll tries again
    }
  });
}

async function remove(user, a, b, area) {
  try {
    await del(`/comparisons/${encodeURIComponent(user.user_id)}/${encodeURIComponent(a)}/${encodeURIComponent(b)}`);
  } catch (error) {
    area.prepend(problemBox(error));
    return;
  }
  notice("Comparison deleted.");
  navigate(`#/compare?${new URLSearchParams({ a, b, deleted: Date.now() })}`);
}

// The two videos this user compared least (never the same pair twice in a row).
async function suggest(user, form) {
  try {
    const [videos, mine] = await Promise.all([
      get("/videos", { limit: 500 }, { authenticated: false }),
      get(`/users/${encodeURIComponent(user.user_id)}/comparisons`, { limit: 1000 }, { authenticated: false }),
    ]);
    const count = new Map(videos.items.map((v) => [v.video_id, 0]));
    const compared = new Set();
    for (const c of mine.items) {
      count.set(c.video_a, (count.get(c.video_a) || 0) + 1);
      count.set(c.video_b, (count.get(c.video_b) || 0) + 1);
      compared.add(`${c.video_a}\n${c.video_b}`);
    }
    const ranked = [...count.entries()].sort((x, y) => x[1] - y[1] || Math.random() - 0.5).map(([id]) => id);
    for (let i = 0; i < ranked.length; i += 1) {
      for (let j = i + 1; j < ranked.length; j += 1) {
        const [x, y] = [ranked[i], ranked[j]].sort();
        if (!compared.has(`${x}\n${y}`)) {
          navigate(`#/compare?${new URLSearchParams({ a: ranked[i], b: ranked[j] })}`);
          return;
        }
      }
    }
    form.after(el("p", { class: "muted" }, "You have compared every pair of the known videos."));
  } catch (error) {
    form.after(problemBox(error));
  }
}
