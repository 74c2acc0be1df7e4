"""The contract layer: every format another tool or a later run reads, each with one typed owner.

Training data and fixtures (`data`), prompt rendering (`prompting`), the output contract (`output`),
the adapter directory and its `reqcheck.json` (`manifest`), io.yaml (`io_yaml`) and the gate report
(`gate_report`). Imports no torch: writing an io.yaml or reading a report stays cheap.
"""
