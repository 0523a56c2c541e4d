"""python -m lmm.fidelity [llm=...] [data=...] [part=sft|pretrain] [n=1000]: does lmm feed the model
what the reference pipelines would? Counts of input_ids / label mismatches against the reference
procedure (lmm.data.fidelity), on your tokenizer and your data, before a long run."""
import sys
from itertools import islice
from pathlib import Path

import hydra
from filelock import FileLock
from omegaconf import DictConfig

# transformers and the data modules load in main(), once the arguments are known good: a bad part or a
# refused argument is reported in about a second instead of after the imports.


def records(source):
    from lmm.data.tokenize import SampleError

    for i in range(len(source)):
        try:
            yield source.read(i)
        except SampleError as e:  # invalid JSON, not a record: counted as training counts them
            yield e


@hydra.main(config_path="../conf", config_name="fidelity", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.part not in ("sft", "pretrain"):
        raise SystemExit(f"unknown part {cfg.part!r}; valid: ['sft', 'pretrain']")
    from transformers import AutoTokenizer

    from lmm.data.fidelity import compare
    from lmm.data.sources import open_sources
    from lmm.data.templates import stage_template
    from lmm.model.spec import build, to_plain

    if cfg.data.get("prepare"):
        Path(cfg.paths.data_dir).mkdir(parents=True, exist_ok=True)
        with FileLock(str(Path(cfg.paths.data_dir) / f".{cfg.data.name}.prepare.lock")):
            build(cfg.data.prepare)
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm.tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    template = stage_template("plain" if cfg.part == "pretrain" else "chat", build(to_plain(cfg.llm.template)))
    part = cfg.data[cfg.part]
    source = open_sources(part.annotations, part.image_root, None, cfg.data.loader.source)
    loader = cfg.data.loader
    report = compare(islice(records(source), cfg.n), tokenizer, template, cfg.reference, cfg.examples,
                     image_placeholder=loader.image_placeholder, leading_assistant=loader.leading_assistant)
    print(f"{cfg.part} of {source.describe()}, {sum(report.counts.values())} records, tokenizer {cfg.llm.tokenizer}")
    print(report.table())
    for line in report.examples:
        print(" -", line)
    print("no difference" if not report.differences else f"{report.differences} records differ")
    if report.differences:
        raise SystemExit(1)


if __name__ == "__main__":
    from lmm.secrets import check_overrides

    check_overrides(sys.argv[1:])
    main()
