"""Gating quality: the table of gates (`gates`), batched evaluation and verdicts (`evaluation`),
intervals and paired tests (`stats`), number formats (`numbers`) and the text and HTML renderings of the
gate report (`report_text`, `report_html`)."""
