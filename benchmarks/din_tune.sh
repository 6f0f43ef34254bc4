#!/usr/bin/env bash
# Each DIN form and DeepFM (history mean-pooled) on two Amazon categories, each model's
# settings chosen on validation by the same grid (embedding lr x dropout x dense L2) with
# `ctr tune`, then the chosen settings over seeds 1-3 (docs/models/din.md). Finished runs are
# reused; $THREADS torch threads per run (default 2); $FORMS picks forms (recipe:label, space
# separated; default all five). Prints each form's ranking, then the combined table of
# docs/models/din.md (benchmarks/din_tune_table.py).
#   bash benchmarks/din_tune.sh
#   FORMS=din_authors:authors_inference bash benchmarks/din_tune.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grid=(--grid train.embedding_optimizer.lr=0.01,0.05 --grid model.dropout=0,0.3 --grid train.optimizer.weight_decay=0,1e-5)
for data in Beauty Toys_and_Games; do
    for form in ${FORMS:-din:paper din_authors:authors_inference din_authors:authors din:ctr deepfm:deepfm}; do
        recipe=${form%%:*} label=${form##*:}
        overrides=(-o "data.path=../shared/data/amazon/$data.txt" -o "name=$data-$label" -o seed=1
                   -o "trainer.num_threads=${THREADS:-2}" -o trainer.progress_bar=false)
        if [ "$label" = ctr ]; then overrides+=(-o model.variant=ctr); fi
        if [ "$label" = authors ]; then overrides+=(-o model.input_norm=batch); fi  # with BatchNorm (the recipe: inference)
        out="runs/din-tune/$data/$label"
        .venv/bin/ctr tune "recipes/amazon_beauty/$recipe.yaml" "${grid[@]}" --seeds 3 --out "$out" "${overrides[@]}" \
            > /dev/null
        echo "## $data, $label"
        cat "$out/results.md"
    done
done
.venv/bin/python -m benchmarks.din_tune_table runs/din-tune
