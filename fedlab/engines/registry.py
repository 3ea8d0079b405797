"""The engines by name, imported by nothing heavy: the config schema checks
``simulation.backend`` against it, :mod:`fedlab.engines.simulation` runs what it names."""

#: ``simulation.backend`` -> "module:function" running one simulation (imported on use, so a
#: run in-process never imports Ray).
ENGINES: dict[str, str] = {
    "ray": "fedlab.engines.ray:run_on_ray",
    "inprocess": "fedlab.engines.inprocess:run_inprocess",
}
