"""The BN health monitor's events: one list of their names, for the monitor (diagnostics/health.py), the epoch
line (train/console.py), and the analyses that count them (`health/<name>` columns of metrics.csv). A leaf
module, so the training loop's console and the analyses read it without importing the monitor."""

# name -> label in reports
EVENTS = {
    "collapsed_variance": "collapsed variance",
    "stale_ema": "stale EMA",
    "batch_composition": "batch composition",
}
