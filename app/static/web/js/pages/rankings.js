// Rankings: a criterion's published global scores, best first, each with its 95 % interval,
// filtered by contributors, paged on the server (fast at any number of videos).

import { get } from "../api.js";
import { navigate } from "../router.js";
import { el, intervalBar, loading, number, showProblem, table } from "../ui.js";

const PAGE = 50;

export async function render(main, { query }) {
  const criteria = await get("/criteria", {}, { authenticated: false });
  const main_criterion = (criteria.find((c) => c.is_main) || criteria[0] || {}).name;
  const criterion = query.get("criterion") || main_criterion;
  const minimum = Math.max(1, Number(query.get("min_contributors") || 1));
  const offset = Math.max(0, Number(query.get("offset") || 0));
  const order = query.get("order") === "asc" ? "asc" : "desc";

  const go = (changes) => {
    const next = new URLSearchParams({ criterion, min_contributors: minimum, order, offset, ...changes });
    navigate(`#/?${next}`);
  };
  const filters = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    go({ criterion: data.get("criterion"), min_contributors: data.get("min_contributors"), order: data.get("order"), offset: 0 });
  } },
    el("label", {}, "Criterion",
      el("select", { name: "criterion" }, criteria.map((c) =>
        el("option", { value: c.name, selected: c.name === criterion }, c.label || c.name)))),
    el("label", {}, "Min. contributors",
      el("input", { name: "min_contributors", type: "number", min: 1, step: 1, value: minimum, inputmode: "numeric" })),
    el("label", {}, "Order",
      el("select", { name: "order" },
        el("option", { value: "desc", selected: order === "desc" }, "Best first"),
        el("option", { value: "asc", selected: order === "asc" }, "Worst first"))),
    el("button", { type: "submit", class: "primary" }, "Show"));
  const search = el("form", { class: "filters", role: "search", onsubmit: (event) => {
    event.preventDefault();
    const id = new FormData(event.target).get("video").trim();
    if (id) navigate(`#/videos/${encodeURIComponent(id)}`);
  } },
    el("label", {}, "Find a video by id", el("input", { name: "video", type: "search", placeholder: "yt:dQw4w9WgXcQ", autocomplete: "off" })),
    el("button", { type: "submit" }, "Open"));
  const results = el("section", { "aria-live": "polite" });
  main.append(el("h1", {}, "Rankings"), filters, search, results);
  loading(results);
  try {
    const page = await get("/scores", { criterion, order, limit: PAGE, offset, min_contributors: minimum }, { authenticated: false });
    results.replaceChildren(...ranking(page, offset, go));
  } catch (error) {
    showProblem(results, error);
  }
}

function ranking(page, offset, go) {
  if (page.run_id === null) return [el("p", {}, "No scores are published for this criterion yet: they appear once a training run succeeds.")];
  if (!page.items.length) return [el("p", {}, "No video has that many contributors.")];
  const values = page.items.flatMap((item) => [item.score - 1.96 * item.uncertainty, item.score + 1.96 * item.uncertainty]);
  const low = Math.min(0, ...values);
  const high = Math.max(0, ...values);
  const rows = page.items.map((item, index) => el("tr", {},
    el("td", { class: "num" }, offset + index + 1),
    el("td", {}, el("a", { href: `#/videos/${encodeURIComponent(item.video_id)}` }, item.video_id)),
    el("td", { class: "num" }, number(item.display_score, 1)),
    el("td", { class: "num hide-narrow" }, `${number(item.score)} ± ${number(1.96 * item.uncertainty)}`),
    el("td", { class: "interval hide-narrow" }, intervalBar(item.score, item.uncertainty, low, high,
      `${item.video_id}: ${number(item.score)}, 95 % interval ± ${number(1.96 * item.uncertainty)}`)),
    el("td", { class: "num" }, item.n_contributors),
    el("td", { class: "num hide-narrow" }, item.n_comparisons)));
  const headers = ["#", "Video", "Score",
    el("th", { scope: "col", class: "hide-narrow" }, "ρ ± 95 %"),
    el("th", { scope: "col", class: "hide-narrow" }, "Interval"),
    el("th", { scope: "col", class: "num" }, "Contributors"),
    el("th", { scope: "col", class: "num hide-narrow" }, "Comparisons")];
  const last = Math.min(page.total, offset + page.items.length);
  return [
    el("p", { class: "muted" }, `From training run `, el("a", { href: `#/runs/${page.run_id}` }, `#${page.run_id}`), `; ${page.total} videos.`),
    table(headers, rows),
    el("nav", { class: "pager", "aria-label": "Pages" },
      el("button", { type: "button", disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - PAGE) }) }, "Previous"),
      el("span", {}, `${offset + 1}–${last} of ${page.total}`),
      el("button", { type: "button", disabled: last >= page.total, onclick: () => go({ offset: offset + PAGE }) }, "Next")),
  ];
}
