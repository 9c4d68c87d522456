// Builds ../assets/plotly-metricbus.min.js: `npm ci && npm run build` in this folder.
//
// Why: the full plotly.js (4.8 MB, every trace type including maps and 3-D) takes over a
// second of main-thread evaluation on a modest CPU before the first chart can be drawn;
// these four trace types take about a third of the bytes and an eighth of that time.
// The options mirror plotly.js's own esbuild-config.js (regl alias, node globals), with
// CSS dropped: it is only maplibre's, for map traces we do not include.
import * as esbuild from "esbuild";
import { readFileSync } from "node:fs";

const version = JSON.parse(readFileSync("node_modules/plotly.js/package.json", "utf8")).version;

await esbuild.build({
  entryPoints: ["entry.js"],
  outfile: "../assets/plotly-metricbus.min.js",
  bundle: true,
  minify: true,
  format: "iife",
  target: "es2016",
  alias: { regl: "@plotly/regl", stream: "stream-browserify" },
  define: { global: "window", "define.amd": "false", "process.env.NODE_DEBUG": "false" },
  loader: { ".css": "empty" },
  banner: {
    js: `/* plotly.js v${version} (MIT licence, Copyright 2012-2026 Plotly, Inc.), partial bundle for metricbus: scatter, scattergl, heatmap, parcoords. Built by sinks/dashboard/plotly_bundle/build.mjs. */`,
  },
  legalComments: "none",
  logLevel: "warning",
});
