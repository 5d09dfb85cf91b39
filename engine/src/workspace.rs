//! Host-side files of a run: expanding `inputs` globs, staging a step's workspace folder (inputs
//! plus direct upstream outputs), and exporting collected outputs to `<out>/<step>/<path>`.
//! Nothing here writes outside the run's temporary folder and the output folder.
