"""pytest-reqcheck: labelled `*.reqcheck.jsonl` fixtures as requirement-check test cases."""
