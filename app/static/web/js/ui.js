// Small DOM helpers shared by the pages: element building, problem display, formatting.

import { ApiProblem } from "./api.js";

// el("a", {href: "#/"}, "text", child…): attributes starting with "on" become listeners.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

// The API's problem as the page shows it: its title, its detail, and each invalid field.
export function problemBox(error) {
  const problem = error instanceof ApiProblem ? error.problem : { title: "Something went wrong", detail: String(error && error.message || error) };
  const box = el("div", { class: "problem", role: "alert" },
    el("strong", {}, problem.title || "Error"),
    problem.detail ? el("span", {}, problem.detail) : null);
  const errors = Array.isArray(problem.errors) ? problem.errors : [];
  if (errors.length) {
    box.append(el("ul", {}, errors.slice(0, 20).map((item) =>
      el("li", {}, `${item.pointer || (item.loc || []).join(".") || (item.row ? `row ${item.row}` : "")} ${item.message || item.msg || ""}`.trim()))));
  }
  return box;
}

export function showProblem(container, error) {
  container.replaceChildren(problemBox(error));
}

export function notice(message, kind = "success") {
  const area = document.getElementById("notice");
  area.replaceChildren(message ? el("div", { class: kind }, message) : "");
}

export function number(value, digits = 2) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

export function when(value) {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

// An interval [value − 1.96·uncertainty, value + 1.96·uncertainty] drawn on a shared axis.
export function intervalBar(value, uncertainty, low, high, label) {
  const span = high - low || 1;
  const x = (v) => Math.max(0, Math.min(100, ((v - low) / span) * 100));
  const half = 1.96 * (uncertainty || 0);
  return svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", role: "img", "aria-label": label },
    svg("line", { x1: x(0), x2: x(0), y1: 0, y2: 10, stroke: "#d0d7de", "stroke-width": 0.5 }),
    svg("rect", { x: x(value - half), y: 3, width: Math.max(0.5, x(value + half) - x(value - half)), height: 4, fill: "#9ec5fe" }),
    svg("rect", { x: x(value) - 0.6, y: 1, width: 1.2, height: 8, fill: "#0b57d0" }));
}

export function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value ?? "–")]));
}

export function table(headers, rows, caption) {
  return el("div", { class: "table-wrap" },
    el("table", {},
      caption ? el("caption", { class: "muted" }, caption) : null,
      el("thead", {}, el("tr", {}, headers.map((h) => typeof h === "string" ? el("th", { scope: "col" }, h) : h))),
      el("tbody", {}, rows)));
}

export function loading(container, what = "Loading…") {
  container.replaceChildren(el("p", { class: "muted", "aria-busy": "true" }, what));
}
