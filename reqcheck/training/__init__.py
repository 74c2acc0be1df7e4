"""Training an adapter: every option once (`config`), the loop (`loop`), the resumable checkpoint
(`checkpoint`), the learning-rate sweep (`sweep`), batches and losses (`encoding`), cached prefixes
(`prefix_cache`) and many processes (`distributed`)."""
