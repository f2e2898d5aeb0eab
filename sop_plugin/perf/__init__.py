"""``sop-perf``: how fast SOP's training step and its SE retrieval are, against iBOT and DINO.

A tool of its own, not part of the benchmark: it times the benchmark's real training step
(it imports ``sop_plugin.bench``; the benchmark never imports it).

- :mod:`~sop_plugin.perf.cli`: the ``sop-perf`` command and perf.json;
- :mod:`~sop_plugin.perf.settings`: the named model/crop/batch settings it times;
- :mod:`~sop_plugin.perf.step`: interleaved step timing of the three methods;
- :mod:`~sop_plugin.perf.memory`: the peak memory of each method, trained on its own;
- :mod:`~sop_plugin.perf.fitting`: the benchmark's module trained on a synthetic batch (both of the above);
- :mod:`~sop_plugin.perf.breakdown`: where SOP's step goes (the objective's timing hook);
- :mod:`~sop_plugin.perf.retrieval`: search time and recall per backend, ``auto``'s choices;
- :mod:`~sop_plugin.perf.design`: how to search a memory that changes every step;
- :mod:`~sop_plugin.perf.agreement`: the neighbours found on a device against an exact CPU search;
- :mod:`~sop_plugin.perf.targets`: the performance targets and their verdicts;
- :mod:`~sop_plugin.perf.machine`: the machine and its load, as perf.json records them;
- :mod:`~sop_plugin.perf.summary`: the console lines at the end of a run;
- :mod:`~sop_plugin.perf.timing`: synchronised clocks and a phase timer;
- :mod:`~sop_plugin.perf.plot`: perf.png.

The layout of perf.json and the measured numbers are in docs/performance.md.
"""
