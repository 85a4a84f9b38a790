// The topology page: draws /api/topology/ID with the vendored cytoscape.js (routers, networks, who revealed whom).
"use strict";
(function () {
  const container = document.getElementById("graph");
  if (!container) { return; }
  const status = document.getElementById("graph-status");
  const colours = {
    router: "#d9480f", switch: "#1971c2", firewall: "#c2255c", hypervisor: "#6741d9", printer: "#5c940d",
    host: "#2b8a3e", unknown: "#868e96", network: "#f59f00", neighbour: "#adb5bd", address: "#ced4da",
  };
  const style = [
    { selector: "node", style: {
      "background-color": (node) => colours[node.data("kind")] || colours.unknown,
      "label": "data(label)", "font-size": 10, "color": "#212529", "text-valign": "bottom", "text-margin-y": 4,
      "width": 22, "height": 22, "text-wrap": "ellipsis", "text-max-width": 120,
    } },
    { selector: "node[kind = 'router'], node[kind = 'firewall']", style: { "shape": "diamond", "width": 34, "height": 34 } },
    { selector: "node[kind = 'switch']", style: { "shape": "round-rectangle", "width": 30, "height": 22 } },
    { selector: "node[kind = 'network']", style: { "shape": "ellipse", "width": 40, "height": 26, "font-weight": "bold" } },
    { selector: "edge", style: {
      "width": 1.5, "line-color": "#adb5bd", "target-arrow-color": "#adb5bd", "target-arrow-shape": "triangle",
      "curve-style": "bezier", "label": "data(label)", "font-size": 8, "color": "#868e96", "text-rotation": "autorotate",
    } },
  ];
  fetch(container.dataset.url, { credentials: "same-origin", cache: "no-store" })
    .then((response) => response.json())
    .then((elements) => {
      const cy = cytoscape({
        container: container,
        elements: { nodes: elements.nodes, edges: elements.edges },
        style: style,
        layout: { name: "cose", animate: false, nodeDimensionsIncludeLabels: true, randomize: false },
        wheelSensitivity: 0.3,
      });
      cy.on("tap", "node", (event) => {
        const href = event.target.data("href");
        if (href) { window.location.href = href; }
      });
      window.ksocketGraph = cy;
      let text = `${elements.nodes.length} vertices, ${elements.edges.length} arrows`;
      if (elements.leftOut) { text += `; ${elements.leftOut} more left out`; }
      status.textContent = text;
      container.dataset.ready = "true";
    })
    .catch((error) => { status.textContent = `cannot draw the graph: ${error}`; });
})();
