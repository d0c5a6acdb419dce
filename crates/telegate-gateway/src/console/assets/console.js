// telegate console: the flows page updates itself from server-sent events. Nothing else on
// any page needs a script; every value is set as text, never as markup.
"use strict";

(function () {
  const flows = document.getElementById("flows");
  if (!flows || typeof EventSource === "undefined") {
    return;
  }
  const points = 120; // two minutes at one snapshot a second
  const history = new Map(); // group id -> [{at, total}]
  const rates = new Map(); // group id -> [rate]

  function total(series) {
    return Object.values(series).reduce((a, b) => a + b, 0);
  }

  function updateTotals(figure, groupId, series) {
    const list = figure.querySelector("dl.totals");
    if (!list) {
      return;
    }
    if (Object.keys(series).length > 0) {
      for (const none of list.querySelectorAll(".none")) {
        none.remove();
      }
    }
    for (const [name, value] of Object.entries(series)) {
      const key = groupId + ":" + name;
      let dd = Array.from(list.querySelectorAll("dd")).find((d) => d.dataset.metric === key);
      if (!dd) {
        const dt = document.createElement("dt");
        dt.textContent = name;
        dd = document.createElement("dd");
        dd.dataset.metric = key;
        list.append(dt, dd);
      }
      dd.textContent = Math.round(value).toString();
    }
  }

  function draw(figure, values) {
    const line = figure.querySelector("svg.chart polyline");
    if (!line) {
      return;
    }
    const max = Math.max(1, ...values);
    const step = 300 / (points - 1);
    const start = points - values.length;
    line.setAttribute(
      "points",
      values
        .map((v, i) => ((start + i) * step).toFixed(1) + "," + (58 - (v / max) * 56).toFixed(1))
        .join(" ")
    );
  }

  let lastAt = 0;

  function apply(snapshot) {
    // A reconnected stream sends its history again: only newer snapshots count.
    if (snapshot.at_ms <= lastAt) {
      return;
    }
    lastAt = snapshot.at_ms;
    for (const group of snapshot.groups) {
      const figure = flows.querySelector('figure[data-group="' + group.id + '"]');
      if (!figure) {
        continue;
      }
      updateTotals(figure, group.id, group.series);
      if (group.id === "state") {
        continue;
      }
      const seen = history.get(group.id) || [];
      const now = { at: snapshot.at_ms, total: total(group.series) };
      const last = seen[seen.length - 1];
      history.set(group.id, [now]);
      if (!last || now.at <= last.at) {
        continue;
      }
      const rate = Math.max(0, (now.total - last.total) / ((now.at - last.at) / 1000));
      const list = (rates.get(group.id) || []).concat([rate]).slice(-points);
      rates.set(group.id, list);
      const shown = figure.querySelector(".rate .now");
      if (shown) {
        shown.textContent = rate.toFixed(1);
      }
      draw(figure, list);
    }
  }

  const events = new EventSource(flows.dataset.events);
  // The last minutes first, so that the charts start filled; then one snapshot a second.
  events.addEventListener("history", (e) => {
    try {
      for (const snapshot of JSON.parse(e.data)) {
        apply(snapshot);
      }
    } catch (err) {
      // No history: the charts fill from now on.
    }
  });
  events.addEventListener("snapshot", (e) => {
    try {
      apply(JSON.parse(e.data));
    } catch (err) {
      // A snapshot that does not parse is skipped; the next one comes in a second.
    }
  });
})();
