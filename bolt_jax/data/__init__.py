"""Data: corpus readers, chunking, thought formats, tokenizer, packing, the Grain pipeline, prepare, toy corpus.

- readers.py    JSONL / Parquet / TFDS readers; malformed records counted and reported (file:line), `strict`
- schema.py     raw / augmented / WRAP record schemas (spec 2.6); atomic JSONL writing
- chunking.py   documents -> sentence units -> chunks -> (prefix, suffix) pairs (spec 2.5)
- formats.py    one function per text format (raw, prior, posterior, random, prior_only, posterior_only, pure)
- tokenizer.py  the one HF tokenizer of a run, with the four BoLT special tokens checked
- packing.py    rows of (input, target) pairs: the original's concat mode or document-masked mode
- pipeline.py   default_data_config(), make_batches(config, split): checkpointable per-process Grain iterator
- prepare.py    run_prepare(config): validation / warmstart / bootstrap splits with manifests
- toy.py        the toy world built for BoLT (3-step mod-7 chains, thoughts known), its word-level tokenizer,
                its evaluation prompt and a thought source returning the true thoughts
"""
