// plotly.js core and the trace types the dashboard draws (sinks/dashboard/figures.py, groups.py,
// runs.py, nodes.py): scatter (in core), scattergl for long series, heatmap for per-core CPU,
// parcoords for hyperparameters. A trace type not registered here draws nothing: add it here
// and rebuild (tests/test_dashboard_browser.py checks the page's figures use only these).
var Plotly = require("plotly.js/lib/core");

Plotly.register([
  require("plotly.js/lib/scattergl"),
  require("plotly.js/lib/heatmap"),
  require("plotly.js/lib/parcoords"),
]);

window.Plotly = Plotly;
