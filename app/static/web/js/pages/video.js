// One video: its global score on every criterion with uncertainty and contributors; for a
// signed-in user, their own (local) scores beside them and their comparisons of it.

import { get } from "../api.js";
import { can, me } from "../session.js";
import { el, number, problemBox, table, when } from "../ui.js";

export async function render(main, { params: [videoId] }) {
  main.append(el("h1", {}, "Video ", el("code", {}, videoId)));
  const [criteria, scores] = await Promise.all([
    get("/criteria", {}, { authenticated: false }),
    get(`/videos/${encodeURIComponent(videoId)}/scores`, {}, { authenticated: false }),
  ]);
  const user = me();
  let local = new Map();
  if (user && user.user_id && can("scores:read_local")) {
    try {
      const mine = await get(`/users/${encodeURIComponent(user.user_id)}/scores`, { limit: 1000 });
      local = new Map(mine.items.filter((s) => s.video_id === videoId).map((s) => [s.criterion, s]));
    } catch (error) {
      main.append(problemBox(error));
    }
  }
  const labels = new Map(criteria.map((c) => [c.name, c.label || c.name]));
  if (!scores.scores.length) {
    main.append(el("p", {}, "No published score for this video yet."));
  } else {
    main.append(el("div", { class: "cards" }, scores.scores.map((s) => el("section", { class: "card", "aria-label": labels.get(s.criterion) },
      el("h3", {}, labels.get(s.criterion) || s.criterion),
      el("div", { class: "big" }, number(s.display_score, 1)),
      el("div", {}, `ρ = ${number(s.score)} ± ${number(1.96 * s.uncertainty)} (95 %)`),
      el("div", { class: "muted" }, `${s.n_contributors} contributors, ${s.n_comparisons} comparisons`),
      local.has(s.criterion) ? el("div", {}, "Yours: ", el("strong", {}, number(local.get(s.criterion).score))) : null))));
  }
  main.append(el("p", {}, el("a", { href: `#/compare?a=${encodeURIComponent(videoId)}` }, "Compare this video with another")));
  if (user && user.user_id) {
    const mine = await get("/comparisons", { user_id: user.user_id, video_id: videoId, limit: 200 }, { authenticated: false });
    main.append(el("h2", {}, "Your comparisons of this video"));
    if (!mine.items.length) {
      main.append(el("p", { class: "muted" }, "You have not compared it yet."));
    } else {
      main.append(table(["Other video", "Criterion", "Your score", "Updated"], mine.items.map((c) => {
        const other = c.video_a === videoId ? c.video_b : c.video_a;
        // Stored scores favour video_b when positive; show them from this video's side.
        const towardThis = c.video_a === videoId ? -c.score : c.score;
        return el("tr", {},
          el("td", {}, el("a", { href: `#/compare?a=${encodeURIComponent(videoId)}&b=${encodeURIComponent(other)}` }, other)),
          el("td", {}, labels.get(c.criterion) || c.criterion),
          el("td", { class: "num" }, `${number(towardThis, 1)} / ${c.score_max}`),
          el("td", {}, when(c.updated_at)));
      }), "Positive: you preferred this video."));
    }
  }
}
