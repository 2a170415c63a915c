"""Do the audio features separate moods on real recordings? (issue "modal feature extraction")

    OMP_NUM_THREADS=1 python benchmarks/audio_moods.py [--workers 1] [--permutations 2000]

The 28 tracks of ``immich-memories-music`` (five mood folders, ~30 s Ogg Opus each) go through
``mmkgrec.features.extract`` (mfcc_stats, chroma_stats, emobase: the real pipeline, decoding and
cache included). Bag-of-frames features are computed per leave-one-out fold with a codebook
fitted on the other 27 tracks only. Each feature set is scored by leave-one-out k-NN accuracy
(k = 1, 3; z-scored with the other 27 tracks' statistics; Euclidean) against the majority-class
rate, with a permutation test (labels shuffled) and Holm-adjusted p-values over all rows.
Secondary label: acoustic vs electronic (from the file names). Writes
benchmarks/results/audio_moods.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETS = ["mfcc_stats", "chroma_stats", "mfcc_stats+chroma_stats", "mfcc_bof", "chroma_bof",
        "emobase"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--permutations", type=int, default=2000)
    parser.add_argument("--codebook-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from mmkgrec.experiments.significance import holm
    from mmkgrec.features import extract, read_catalogue, read_features
    from mmkgrec.features.audio import ChromaBof, MfccBof
    from mmkgrec.features.moods import loo_knn, mood_tracks, write_mood_catalogue

    tracks = mood_tracks()
    moods = [t.mood for t in tracks]
    styles = [t.style for t in tracks]
    work = Path(tempfile.mkdtemp(prefix="audio-moods-"))
    catalogue = write_mood_catalogue(tracks, work / "catalogue.csv")

    start = time.perf_counter()
    report = extract(catalogue, work / "features", ["mfcc_stats", "chroma_stats", "emobase"],
                     workers=args.workers, use_cache=False, progress=False)
    extract_s = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"{report.failed} tracks failed to decode: {report.errors}")
    feats = read_features(work / "features")
    matrices = dict(feats.modalities)
    matrices["mfcc_stats+chroma_stats"] = np.hstack([matrices["mfcc_stats"],
                                                      matrices["chroma_stats"]])

    # bag of frames: frame samples once, then a codebook per fold fitted without the held-out track
    items = read_catalogue(catalogue).items
    bof_seconds = {}
    fold_features = {}
    for cls in (MfccBof, ChromaBof):
        t0 = time.perf_counter()
        ex = cls(codebook_size=args.codebook_size)
        frames = [ex.frames(item).T for item in items]  # each [T_i, d]
        samples = [ex.fit_sample(item, f"{i:015x}") for i, item in enumerate(items)]

        def features_without(i: int, ex=ex, frames=frames, samples=samples) -> np.ndarray:
            ex.fit_frames([s for j, s in enumerate(samples) if j != i])
            return np.stack([ex.encode(f) for f in frames])  # [n, k]

        cache = {i: features_without(i) for i in range(len(items))}
        fold_features[cls.name] = cache.__getitem__
        bof_seconds[cls.name] = time.perf_counter() - t0

    rows = []
    for name in SETS:
        features = fold_features.get(name, matrices.get(name))
        for label, values in (("mood", moods), ("style", styles)):
            result = loo_knn(features, values, ks=(1, 3), n_permutations=args.permutations)
            for k in (1, 3):
                rows.append({"features": name, "label": label, "k": k,
                             "width": int(features(0).shape[1] if callable(features)
                                          else features.shape[1]),
                             "accuracy": result[f"k{k}"]["accuracy"],
                             "correct": result[f"k{k}"]["correct"], "n": result["n"],
                             "majority_rate": result["majority_rate"],
                             "p_value": result[f"k{k}"]["p_value"],
                             "null_mean": result[f"k{k}"]["null_mean"],
                             "classes": result["classes"]})
    adjusted = holm([r["p_value"] for r in rows])
    for r, p in zip(rows, adjusted):
        r["p_holm"] = float(p)

    import librosa
    import opensmile
    import sklearn

    out = {
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/audio_moods.py", *sys.argv[1:]]),
        "tracks": len(tracks), "permutations": args.permutations,
        "codebook_size": args.codebook_size, "workers": args.workers, "threads": 1,
        "extract_seconds": round(extract_s, 2),
        "bof_seconds": {k: round(v, 2) for k, v in bof_seconds.items()},
        "extract_counts": {n: vars(r) for n, r in report.extractors.items()},
        "versions": {"python": platform.python_version(), "librosa": librosa.__version__,
                     "opensmile": opensmile.__version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audio_moods.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "audio_moods.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    mood = next(r for r in out["rows"] if r["label"] == "mood")
    style = next(r for r in out["rows"] if r["label"] == "style")
    lines = [
        "# Audio features vs mood on real recordings",
        "",
        f"`{out['command']}`",
        "",
        f"{out['tracks']} tracks of `immich-memories-music` (classes {mood['classes']}; "
        f"majority rate {mood['majority_rate']:.3f}). Leave-one-out k-NN, z-scored and (for "
        f"bag-of-frames, codebook size {out['codebook_size']}) fitted without the held-out track; "
        f"p: permutation test with {out['permutations']} label shuffles, p_holm: Holm-adjusted "
        f"over all {len(out['rows'])} rows. Extraction of mfcc_stats + chroma_stats + emobase: "
        f"{out['extract_seconds']} s with {out['workers']} worker(s), 1 thread.",
        "",
        "| label | features | width | k | accuracy | correct | majority rate | p | p_holm |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['label']} | {r['features']} | {r['width']} | {r['k']} | "
                     f"{r['accuracy']:.3f} | {r['correct']}/{r['n']} | {r['majority_rate']:.3f} | "
                     f"{r['p_value']:.4f} | {r['p_holm']:.4f} |")
    lines += ["", f"style = acoustic vs electronic from the file names (classes {style['classes']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
