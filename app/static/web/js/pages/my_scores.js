// My scores: the signed-in user's local scores against the global ones, as a scatter plot and a
// table, so a contributor sees where their taste differs from everyone's.

import { get } from "../api.js";
import { navigate } from "../router.js";
import { can, me } from "../session.js";
import { el, number, svg, table } from "../ui.js";

export async function render(main, { query }) {
  main.append(el("h1", {}, "My scores"));
  const user = me();
  if (!user || !user.user_id || !can("scores:read_local")) {
    main.append(el("p", {}, "Your individual scores need a signed-in user whose credential may read them. ",
      el("a", { href: "#/signin" }, "Sign in")));
    return;
  }
  const criteria = await get("/criteria", {}, { authenticated: false });
  const criterion = query.get("criterion") || (criteria.find((c) => c.is_main) || criteria[0]).name;
  main.append(el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    navigate(`#/me?criterion=${encodeURIComponent(new FormData(event.target).get("criterion"))}`);
  } },
    el("label", {}, "Criterion", el("select", { name: "criterion" }, criteria.map((c) =>
      el("option", { value: c.name, selected: c.name === criterion }, c.label || c.name)))),
    el("button", { type: "submit" }, "Show")));
  const local = await get(`/users/${encodeURIComponent(user.user_id)}/scores`, { criterion, limit: 1000 });
  if (!local.items.length) {
    main.append(el("p", {}, "No individual scores yet: ", el("a", { href: "#/compare" }, "compare a few videos"),
      " and they appear once the next training run publishes."));
    return;
  }
  const global = await globalScores(criterion, new Set(local.items.map((s) => s.video_id)));
  const points = local.items.filter((s) => global.has(s.video_id)).map((s) => ({
    video: s.video_id, mine: s.score, everyone: global.get(s.video_id).score,
  }));
  main.append(
    el("p", { class: "muted" }, `${local.total} videos scored by you on this criterion. Above the diagonal: you like it more than everyone does.`),
    el("figure", { class: "scatter" }, scatter(points),
      el("figcaption", { class: "muted" }, "Horizontal: global score; vertical: your score.")),
    table(["Video", "Yours", "Everyone", "Difference"], points
      .sort((x, y) => Math.abs(y.mine - y.everyone) - Math.abs(x.mine - x.everyone))
      .map((p) => el("tr", {},
        el("td", {}, el("a", { href: `#/videos/${encodeURIComponent(p.video)}` }, p.video)),
        el("td", { class: "num" }, number(p.mine)),
        el("td", { class: "num" }, number(p.everyone)),
        el("td", { class: "num" }, number(p.mine - p.everyone)))), "Largest differences first."));
}

async function globalScores(criterion, wanted) {
  const found = new Map();
  for (let offset = 0; offset < 5000 && found.size < wanted.size; offset += 1000) {
    const page = await get("/scores", { criterion, limit: 1000, offset }, { authenticated: false });
    for (const item of page.items) if (wanted.has(item.video_id)) found.set(item.video_id, item);
    if (offset + page.items.length >= page.total) break;
  }
  return found;
}

function scatter(points) {
  const size = 320;
  const pad = 28;
  const values = points.flatMap((p) => [p.mine, p.everyone]);
  const limit = Math.max(1, ...values.map(Math.abs)) * 1.1;
  const at = (v) => pad + ((v + limit) / (2 * limit)) * (size - 2 * pad);
  const flip = (v) => size - at(v);
  const label = `Scatter plot of ${points.length} videos: your score against the global score.`;
  return svg("svg", { viewBox: `0 0 ${size} ${size}`, role: "img", "aria-label": label },
    svg("line", { x1: at(-limit), y1: flip(-limit), x2: at(limit), y2: flip(limit), stroke: "#d0d7de" }),
    svg("line", { x1: at(0), y1: pad, x2: at(0), y2: size - pad, stroke: "#eef0f2" }),
    svg("line", { x1: pad, y1: flip(0), x2: size - pad, y2: flip(0), stroke: "#eef0f2" }),
    points.map((p) => {
      const dot = svg("circle", { cx: at(p.everyone), cy: flip(p.mine), r: 4, fill: "#0b57d0", "fill-opacity": 0.7 });
      const title = svg("title");
      title.textContent = `${p.video}: yours ${number(p.mine)}, everyone ${number(p.everyone)}`;
      dot.append(title);
      return dot;
    }));
}
