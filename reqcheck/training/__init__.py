"""Training an adapter: every option once (`config`), the loop (`loop`) around one run object (`run`) with
its rooms: preparation (`prepare`), the learning-rate sweep (`sweep`), epochs and steps (`steps`),
validation (`validation`), what a run writes (`outputs`) and what it tells the user (`progress`); the
resumable checkpoint (`checkpoint`), batches and losses (`encoding`), cached prefixes (`prefix_cache`) and
many processes (`distributed`)."""
