#!/usr/bin/env bash
# DIN's three forms (the authors' with its own normalisation and with BatchNorm) against
# DeepFM (history mean-pooled) on two Amazon categories, seeds 1-3 each, with the shipped
# recipes (docs/models/din.md). Each recipe's runs hold the lock file $CTR_LOCK (default
# /tmp/ctr-heavy.lock) and use $THREADS torch threads (default 2); finished runs are reused.
# Prints one table per dataset and model. (authors_inference is variant: authors as shipped; a
# folder of an earlier "authors" label holds BatchNorm runs and is not read.)
#   bash benchmarks/din_amazon.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for data in Beauty Toys_and_Games; do
    for form in din:paper din_authors:authors_inference din_authors:authors_batch din:ctr deepfm:deepfm; do
        recipe=${form%%:*} label=${form##*:}
        overrides=(-o "data.path=../shared/data/amazon/$data.txt" -o "name=$data-$label")
        if [ "$label" = ctr ]; then overrides+=(-o model.variant=ctr); fi
        if [ "$label" = authors_batch ]; then overrides+=(-o model.input_norm=batch); fi
        flock "${CTR_LOCK:-/tmp/ctr-heavy.lock}" .venv/bin/python -m benchmarks.seeds "recipes/amazon_beauty/$recipe.yaml" \
            --seeds 1 2 3 --out "runs/din-amazon/$data" --threads "${THREADS:-2}" "${overrides[@]}"
    done
done
