"""MovieLens 100K in GroupLens' own file format, for machines that reach only package registries.

    python -m benchmarks.movielens_100k data/ml-100k

With internet access, download ml-100k.zip from https://grouplens.org/datasets/movielens/ and
unpack it instead: the benchmarks read only u.data, u.item and u.user. Without it (these build
machines reach PyPI, not grouplens.org), this script takes the copy of MovieLens 100K that the
RecBole wheel on PyPI carries (`recbole/dataset_example/ml-100k`, RecBole's "atomic files" of the
same ratings), downloaded with pip (`--no-deps`: nothing is installed), and writes it back out as
GroupLens' files:

* u.data: the 100,000 ratings, tab-separated user, item, rating, timestamp, in RecBole's order,
  which is u.data's own (its first line is GroupLens' first line, "196 242 3 881250949");
* u.item: id | title (year) | release date | video release date | IMDb URL | 19 genre flags in
  u.genre's order. RecBole keeps the title without its year, the year and the genres; the date
  and URL fields, which tfrec's loader does not read, are left empty;
* u.user: id | age | gender | occupation | zip.

The counts are checked against MovieLens 100K's README (100,000 ratings by 943 users of 1,682
movies, every user with at least 20 ratings), and the ratings' SHA-256 is printed.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfrec.datasets import MOVIELENS_GENRES  # noqa: E402

WHEEL = "recbole==1.2.1"
SOURCE = "recbole/dataset_example/ml-100k/ml-100k"


def _atomic(archive, suffix):
    """One RecBole atomic file as strings, its 'name:type' header reduced to the names."""
    with archive.open(f"{SOURCE}.{suffix}") as f:
        frame = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def write_movielens_100k(out_dir, wheel_dir):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", wheel_dir, WHEEL],
                   check=True)
    wheel = next(os.path.join(wheel_dir, name) for name in os.listdir(wheel_dir) if name.endswith(".whl"))
    with zipfile.ZipFile(wheel) as archive:
        ratings, movies, users = (_atomic(archive, s) for s in ("inter", "item", "user"))
    ratings = ratings.astype(np.int64)
    if (len(ratings), ratings["user_id"].nunique(), ratings["item_id"].nunique()) != (100_000, 943, 1682) or \
            ratings.groupby("user_id").size().min() < 20 or len(movies) != 1682 or len(users) != 943:
        raise RuntimeError(f"{wheel} does not hold MovieLens 100K as its README counts it")
    genres = movies["class"].str.split(" ")
    unknown = sorted(set().union(*genres) - set(MOVIELENS_GENRES))
    if unknown:
        raise RuntimeError(f"genres outside u.genre: {unknown}")
    flags = np.array([[int(name in row) for name in MOVIELENS_GENRES] for row in genres])
    titles = movies["movie_title"] + np.where(movies["release_year"] != "", " (" + movies["release_year"] + ")", "")
    os.makedirs(out_dir, exist_ok=True)
    ratings.to_csv(os.path.join(out_dir, "u.data"), sep="\t", header=False, index=False)
    item_lines = ["|".join([item, title, "", "", "", *map(str, row)])
                  for item, title, row in zip(movies["item_id"], titles, flags)]
    with open(os.path.join(out_dir, "u.item"), "w", encoding="latin-1", errors="replace") as f:
        f.write("\n".join(item_lines) + "\n")
    users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(
        os.path.join(out_dir, "u.user"), sep="|", header=False, index=False)
    with open(os.path.join(out_dir, "u.data"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {out_dir}/u.data, u.item, u.user from {os.path.basename(wheel)}: 100,000 ratings, 943 users, "
          f"1,682 movies; u.data sha256 {digest}")
    return digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="data/ml-100k")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as wheel_dir:
        write_movielens_100k(args.out_dir, wheel_dir)


if __name__ == "__main__":
    main()
