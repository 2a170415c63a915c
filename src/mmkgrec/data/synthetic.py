"""The embedded synthetic music MMKG: a seeded generator that needs no files.

Generative story (all latent factors live in ``R^latent_dim``):

- Catalogue: genre -> artist -> album -> song. Each level's factor is its parent's factor plus
  Gaussian noise, so KG neighbours share taste signal. Every genre has an artist, every artist an
  album, every album a song. Tags have factors near a genre; each song gets 1..``tags_per_item``
  tags drawn by affinity. Artists are ``similar_to`` their most similar artists (cosine).
- KG relations (6): ``on_album`` song->album, ``by_artist`` song->artist, ``tagged`` song->tag,
  ``album_by`` album->artist, ``has_genre`` artist->genre, ``similar_to`` artist->artist.
- Popularity: songs are ranked by artist appeal + song appeal; the logit bias is
  ``-popularity_exponent * log(rank)`` (Zipf). User activity is Zipf by a random user rank
  (exponent ``activity_exponent``), rescaled to a mean of ``interactions_per_user``.
- Users: taste = mix of a favourite and a second genre factor + noise. A user's songs are drawn
  without replacement with probability ~ ``exp(taste . song / sqrt(d) / temperature + bias)``
  (Gumbel top-k, in user chunks, so millions of interactions fit in memory).
- Values are play counts ``1 + Poisson(play_rate * exp(z))``, ``z`` the user's z-scored taste for
  the song among the songs they played. ``threshold`` (default 2) makes plays >= 2 positives:
  about four rows in five. Timestamps: a per-user start in 2020 plus gaps of ~6 h (whole seconds,
  strictly increasing per user).
- Modalities: ``feature = source_factor @ P_m + modality_noise * N(0, 1)`` with a fixed random
  projection ``P_m`` per modality; ``image`` (cover art) projects the album factor, the others the
  song factor. Each row is missing (mask False, zeroed) with probability ``missing_rate``.

Ids follow :func:`mmkgrec.data.dataset.build_mmkg`: users ``u<i>``, items ``s<i>`` whose entity
is ``song:<i>``; other entities (``artist:<j>``, ``album:<j>``, ``genre:<name>``, ``tag:<name>``)
and relations are numbered by first appearance in the triples, and interactions are sorted by
(user, timestamp), so writing the dataset to a file format and reading it back is the identity.
The true latent factors are not exposed.

Determinism: the same seed and config give the same dataset on a machine (random streams are
keyed by seed, component and chunk, not by thread). Bit-identity across BLAS builds is not
guaranteed, since near-ties in the top-k could resolve differently.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from mmkgrec.data.dataset import MMKG
from mmkgrec.errors import ConfigError

# ---- fixed constants of the generative story (changing them changes every dataset) -------------
ARTIST_SPREAD, ALBUM_SPREAD, SONG_SPREAD = 0.8, 0.4, 0.5  # std of each level around its parent
TAG_SPREAD, TAG_SHARPNESS = 0.8, 2.0  # tag factors around a genre; tag choice logit scale
USER_SECOND_GENRE, USER_SPREAD = 0.5, 0.7  # weight of a user's second genre; taste noise
ARTIST_ALBUM_ZIPF = 0.8  # popular artists release more albums
START_TIME, START_SPREAD_S, MEAN_GAP_S = 1_577_836_800.0, 365 * 86_400.0, 6 * 3_600.0
CHUNK_CELLS = 1 << 23  # cells of one [chunk_rows, n_cols] score block (32 MiB as float32)
POOL_CELLS = 1 << 19  # cells of one [chunk_rows, pool] block of candidate pools (cache-sized)
ALBUM_LEVEL_MODALITIES = frozenset({"image"})  # cover art is shared by an album's songs

GENRES = ("rock", "pop", "jazz", "hip-hop", "electronic", "classical", "folk", "metal", "blues",
          "country", "reggae", "soul", "punk", "r-and-b", "ambient", "techno", "house", "indie",
          "latin", "funk", "disco", "gospel", "grunge", "k-pop")
TAGS = ("chill", "energetic", "melancholic", "dreamy", "upbeat", "dark", "acoustic", "live",
        "instrumental", "female-vocals", "male-vocals", "catchy", "mellow", "epic", "romantic",
        "psychedelic", "lo-fi", "experimental", "danceable", "atmospheric", "aggressive", "happy",
        "sad", "nostalgic", "summer", "night", "workout", "study", "party", "relaxing", "groovy",
        "heavy", "soft", "uplifting", "raw", "cinematic", "minimal", "retro", "anthemic", "hypnotic")
RELATIONS = ("on_album", "by_artist", "tagged", "album_by", "has_genre", "similar_to")

# Random stream ids, one per component, so that changing one part leaves the others unchanged.
_CATALOGUE, _TAGS, _USERS, _INTERACTIONS, _MODALITY = 1, 2, 3, 4, 5


class SyntheticConfig(BaseModel):
    """Sizes and knobs of the synthetic music MMKG (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    n_users: PositiveInt
    n_items: PositiveInt = Field(description="songs")
    n_artists: PositiveInt
    n_albums: PositiveInt
    n_genres: PositiveInt
    n_tags: PositiveInt
    tags_per_item: int = Field(3, ge=0, description="each song gets 1..tags_per_item tags")
    similar_artists: int = Field(3, ge=0, description="similar_to edges per artist")
    latent_dim: PositiveInt = 16
    interactions_per_user: float = Field(gt=0, description="mean rows per user")
    min_interactions_per_user: PositiveInt = 5
    activity_exponent: float = Field(0.6, ge=0, description="Zipf exponent of user activity")
    popularity_exponent: float = Field(1.0, ge=0, description="Zipf exponent of song popularity")
    temperature: float = Field(1.0, gt=0, description="of the taste term in the choice logits")
    play_rate: float = Field(2.0, gt=0, description="Poisson rate of extra plays at mean taste")
    threshold: float = Field(2.0, description="plays >= threshold are positives")
    modalities: dict[str, PositiveInt] = Field(
        default_factory=lambda: {"audio": 40, "text": 32, "image": 48, "sentiment": 4})
    missing_rate: float = Field(0.1, ge=0, lt=1, description="share of items lacking a modality")
    modality_noise: float = Field(0.5, ge=0, description="std of the noise added to features")
    candidates: PositiveInt | None = Field(
        None, description="None: each user's songs are drawn from the whole catalogue (exact, "
        "O(users x items)); n: from a pool of max(n, 2 x activity) candidates per user drawn by "
        "popularity and uniformly, re-weighted to the same target (approximate, linear time: "
        "for very large catalogues)")

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        if not self.n_genres <= self.n_artists <= self.n_albums <= self.n_items:
            raise ValueError("need n_genres <= n_artists <= n_albums <= n_items (every genre has "
                             "an artist, every artist an album, every album a song)")
        if self.tags_per_item > self.n_tags:
            raise ValueError("tags_per_item must be <= n_tags")
        if self.similar_artists >= self.n_artists and self.similar_artists:
            raise ValueError("similar_artists must be < n_artists")
        cap = self.max_interactions_per_user
        if not self.min_interactions_per_user <= self.interactions_per_user <= cap:
            raise ValueError(f"need min_interactions_per_user <= interactions_per_user <= "
                             f"n_items // 2 = {cap}")
        if any(not name.strip() or name != name.strip() for name in self.modalities):
            raise ValueError("modality names must be non-empty without surrounding spaces")
        return self

    @property
    def max_interactions_per_user(self) -> int:
        """No user plays more than half the catalogue."""
        return max(1, self.n_items // 2)


PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(n_users=60, n_items=120, n_artists=20, n_albums=36, n_genres=4,
                            n_tags=16, interactions_per_user=20, min_interactions_per_user=3,
                            similar_artists=2),
    "small": SyntheticConfig(n_users=1_000, n_items=2_000, n_artists=150, n_albums=300,
                             n_genres=12, n_tags=60, interactions_per_user=50),
    "medium": SyntheticConfig(n_users=10_000, n_items=20_000, n_artists=1_500, n_albums=3_000,
                              n_genres=20, n_tags=200, interactions_per_user=50),
    "large": SyntheticConfig(n_users=100_000, n_items=50_000, n_artists=4_000, n_albums=8_000,
                             n_genres=24, n_tags=400, interactions_per_user=50),
}


def make_config(preset: str | SyntheticConfig = "small", **overrides) -> SyntheticConfig:
    """The validated config of ``preset`` (a name or a config) with ``overrides`` applied.

    Raises:
        ConfigError: unknown preset, unknown field or invalid value.
    """
    if isinstance(preset, SyntheticConfig):
        base, label = preset, "custom"
    elif preset in PRESETS:
        base, label = PRESETS[preset], repr(preset)
    else:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        return SyntheticConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as error:
        problems = []
        for e in error.errors():
            where = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown option {where!r} (known: "
                                f"{', '.join(SyntheticConfig.model_fields)})")
            else:
                got = f" (got {e['input']!r})" if e["loc"] else ""
                problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{got}")
        raise ConfigError(f"invalid synthetic config for preset {label}: "
                          + "; ".join(problems)) from None


def generate(preset: str | SyntheticConfig = "small", *, seed: int = 0, **overrides) -> MMKG:
    """Generate the synthetic music MMKG ``synthetic-<preset>``.

    Args:
        preset: a name in :data:`PRESETS` (``tiny``, ``small``, ``medium``, ``large``), or a
            ready :class:`SyntheticConfig` (dataset name ``synthetic-custom``).
        seed: random seed; the same seed and config give the same dataset.
        **overrides: SyntheticConfig fields, e.g. ``generate("tiny", n_users=30, missing_rate=0.5)``.

    Returns:
        A validated MMKG with play-count interactions (threshold ``config.threshold``), timestamps,
        a 6-relation KG, one modality per ``config.modalities`` entry and display texts
        (``name``, ``artist``, ``album``, ``genre``, ``tags``).

    Raises:
        ConfigError: unknown preset or option, invalid value or seed.
    """
    config = make_config(preset, **overrides)
    label = "custom" if isinstance(preset, SyntheticConfig) else preset
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return _build(config, int(seed), f"synthetic-{label}", label)


# ---- generation --------------------------------------------------------------------------------
def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _cover(n: int, n_parents: int, rng: np.random.Generator,
           weights: np.ndarray | None = None) -> np.ndarray:
    """[n] parent of each child: every parent gets one child, the rest are drawn (by weights)."""
    extra = rng.choice(n_parents, size=n - n_parents, p=weights)
    return rng.permutation(np.concatenate([np.arange(n_parents), extra]))


def _gumbel_topk(logits: np.ndarray, counts: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``counts[r]`` columns of each row without replacement, P ~ softmax(logits[r]).

    Args:
        logits: [rows, n_cols] float32, overwritten.
        counts: [rows] int, each < n_cols.
    Returns:
        chosen [rows, k_max] int64 (best key first) and valid [rows, k_max] bool.
    """
    k_max = int(counts.max())
    keys = rng.random(size=logits.shape, dtype=np.float32)  # [rows, n_cols] uniform
    with np.errstate(divide="ignore"):  # a uniform 0 gives key +inf: never chosen
        np.log(keys, out=keys)
        np.negative(keys, out=keys)  # Exp(1)
        np.log(keys, out=keys)  # -Gumbel
    keys -= logits  # -(logit + Gumbel): the smallest keys win
    chosen = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]  # [rows, k_max]
    order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1, kind="stable")
    chosen = np.take_along_axis(chosen, order, axis=1).astype(np.int64)
    valid = np.arange(k_max)[None, :] < counts[:, None]  # [rows, k_max]
    return chosen, valid


def _chunks(n_rows: int, n_cols: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_CELLS // max(1, n_cols))
    return [(start, min(n_rows, start + step)) for start in range(0, n_rows, step)]


def _activity(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[n_users] interactions per user: Zipf by a random rank, clipped, mean ~ the target."""
    rank = rng.permutation(config.n_users) + 1.0
    weight = rank ** -config.activity_exponent  # [n_users]
    lo, hi = config.min_interactions_per_user, config.max_interactions_per_user
    target = config.interactions_per_user * config.n_users
    log_lo, log_hi = np.log(lo / weight.max()), np.log(hi / weight.min())
    for _ in range(60):  # bisection on the log scale for sum(clip(C * weight)) = target
        mid = (log_lo + log_hi) / 2
        total = np.clip(np.exp(mid) * weight, lo, hi).sum()
        log_lo, log_hi = (mid, log_hi) if total < target else (log_lo, mid)
    return np.clip(np.rint(np.exp(log_lo) * weight), lo, hi).astype(np.int64)


def _names(base: tuple[str, ...], n: int) -> np.ndarray:
    """[n] unique slugs: the base names, then pairs ``a-b`` (b != a), then ``name-<k>``."""
    size = len(base)
    i = np.arange(n)
    j = i - size  # index among the pairs
    first = np.asarray(base, dtype=object)[i % size]
    second = np.asarray(base, dtype=object)[(j % size + j // size + 1) % size]
    pairs = first + "-" + second
    numbered = first + "-" + (i // size + 1).astype(str).astype(object)
    names = np.where(i < size, first, np.where(j < size * (size - 1), pairs, numbered))
    return names.astype(str)


def _prefixed(prefix: str, n: int) -> np.ndarray:
    return np.char.add(prefix, np.arange(n).astype(str))


def _build(config: SyntheticConfig, seed: int, name: str, label: str) -> MMKG:
    c, d = config, config.latent_dim
    n_items = c.n_items

    # Catalogue tree and its latent factors.
    rng = _rng(seed, _CATALOGUE)
    genre_of_artist = _cover(c.n_artists, c.n_genres, rng)  # [n_artists]
    artist_zipf = (np.arange(c.n_artists) + 1.0) ** -ARTIST_ALBUM_ZIPF
    artist_zipf = rng.permutation(artist_zipf / artist_zipf.sum())
    artist_of_album = _cover(c.n_albums, c.n_artists, rng, artist_zipf)  # [n_albums]
    album_of_song = _cover(n_items, c.n_albums, rng)  # [n_items]
    artist_of_song = artist_of_album[album_of_song]  # [n_items]
    genre_f = rng.standard_normal((c.n_genres, d))
    artist_f = genre_f[genre_of_artist] + ARTIST_SPREAD * rng.standard_normal((c.n_artists, d))
    album_f = artist_f[artist_of_album] + ALBUM_SPREAD * rng.standard_normal((c.n_albums, d))
    song_f = album_f[album_of_song] + SONG_SPREAD * rng.standard_normal((n_items, d))
    # Popularity: appeal of the artist plus the song, Zipf over the appeal rank.
    appeal = rng.standard_normal(c.n_artists)[artist_of_song] + rng.standard_normal(n_items)
    rank = np.empty(n_items)
    rank[np.argsort(-appeal, kind="stable")] = np.arange(1, n_items + 1)
    pop_bias = (-c.popularity_exponent * np.log(rank)).astype(np.float32)  # [n_items]

    # Tags per song (Gumbel top-k by affinity) and similar artists (cosine top-k).
    rng = _rng(seed, _TAGS)
    tag_f = genre_f[rng.integers(c.n_genres, size=c.n_tags)] + TAG_SPREAD * rng.standard_normal(
        (c.n_tags, d))
    tag_pairs = np.zeros((0, 2), dtype=np.int64)  # (song, tag) rows
    tag_table = np.zeros((n_items, 0), dtype=np.int64)
    if c.tags_per_item:
        n_tags_of = rng.integers(1, c.tags_per_item + 1, size=n_items)  # [n_items]
        logits = (TAG_SHARPNESS / np.sqrt(d) * song_f @ tag_f.T).astype(np.float32)
        tag_table, tag_valid = _gumbel_topk(logits, n_tags_of, rng)  # [n_items, tags_per_item]
        tag_table = np.where(tag_valid, tag_table, -1)
        song_idx = np.broadcast_to(np.arange(n_items)[:, None], tag_table.shape)
        tag_pairs = np.column_stack([song_idx[tag_valid], tag_table[tag_valid]])
    similar = _similar_artists(artist_f, c.similar_artists)  # [n_artists * k, 2]

    # Provisional entity ids: items, artists, albums, genres, tags (renumbered below).
    o_artist = n_items
    o_album = o_artist + c.n_artists
    o_genre = o_album + c.n_albums
    o_tag = o_genre + c.n_genres
    songs, albums, artists = np.arange(n_items), np.arange(c.n_albums), np.arange(c.n_artists)
    blocks = [  # (relation, head, tail) in RELATIONS order
        (songs, o_album + album_of_song),
        (songs, o_artist + artist_of_song),
        (tag_pairs[:, 0], o_tag + tag_pairs[:, 1]),
        (o_album + albums, o_artist + artist_of_album),
        (o_artist + artists, o_genre + genre_of_artist),
        (o_artist + similar[:, 0], o_artist + similar[:, 1]),
    ]
    raw = np.concatenate([np.column_stack([h, np.full(len(h), r), t])
                          for r, (h, t) in enumerate(blocks)]).astype(np.int64)  # [n_triples, 3]
    provisional_names = np.concatenate([
        _prefixed("song:", n_items), _prefixed("artist:", c.n_artists),
        _prefixed("album:", c.n_albums),
        np.char.add("genre:", _names(GENRES, c.n_genres)),
        np.char.add("tag:", _names(TAGS, c.n_tags)),
    ])
    triples, entities, relations = _renumber(raw, provisional_names, n_items)

    interactions = _interactions(c, seed, song_f, genre_f, pop_bias)

    dataset = MMKG(
        name=name, users=_prefixed("u", c.n_users), items=_prefixed("s", n_items),
        entities=entities, relations=relations, interactions=interactions,
        threshold=float(c.threshold), triples=triples,
        item_attrs=_item_attrs(c, artist_of_song, album_of_song, genre_of_artist, tag_table),
    )
    for modality, width in c.modalities.items():
        stream = zlib.crc32(modality.encode())
        rng = _rng(seed, _MODALITY, stream)
        source = album_f[album_of_song] if modality in ALBUM_LEVEL_MODALITIES else song_f
        projection = rng.standard_normal((d, width)) / np.sqrt(d)  # [d, width]
        features = source @ projection + c.modality_noise * rng.standard_normal((n_items, width))
        dataset.add_modality(modality, features, rng.random(n_items) >= c.missing_rate)

    config_json = json.dumps(_dump(c), sort_keys=True)
    dataset.meta.update({"synthetic preset": label, "synthetic seed": seed})
    for key, value in _dump(c).items():
        if key == "modalities":
            value = ", ".join(f"{m}={w}" for m, w in value.items())
        dataset.meta[f"synthetic {key}"] = value
    dataset.notes.append(
        f"synthetic data (seed {seed}): values are play counts >= 1; plays >= {c.threshold:g} are "
        f"positives")
    dataset.validate()
    dataset.provenance.append({
        "file": "<generated>", "sha256": dataset.fingerprint(), "bytes": 0,
        "role": f"synthetic preset {label} seed {seed} config {config_json}",
    })
    return dataset


def _dump(c: SyntheticConfig) -> dict:
    """The config as recorded in meta / provenance; ``candidates`` only when set."""
    return c.model_dump(exclude={"candidates"} if c.candidates is None else None)


def _similar_artists(artist_f: np.ndarray, k: int) -> np.ndarray:
    """[n_artists * k, 2] (artist, similar artist) rows: each artist's k nearest by cosine."""
    n = len(artist_f)
    if k == 0:
        return np.zeros((0, 2), dtype=np.int64)
    unit = (artist_f / np.linalg.norm(artist_f, axis=1, keepdims=True)).astype(np.float32)
    out = []
    for start, stop in _chunks(n, n):
        cosine = unit[start:stop] @ unit.T  # [chunk, n_artists]
        cosine[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not oneself
        best = np.argpartition(-cosine, k - 1, axis=1)[:, :k]  # [chunk, k]
        order = np.argsort(-np.take_along_axis(cosine, best, axis=1), axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        out.append(np.column_stack([np.repeat(np.arange(start, stop), k), best.ravel()]))
    return np.concatenate(out).astype(np.int64)


def _renumber(raw: np.ndarray, names: np.ndarray, n_items: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber provisional ids as build_mmkg does: items first, then other entities by first
    appearance (row by row, head before tail); relations by first appearance."""
    seen = pd.unique(raw[:, [0, 2]].ravel())  # [n_seen] first-appearance order
    others = seen[seen >= n_items]
    new_id = np.full(len(names), -1, dtype=np.int64)
    new_id[:n_items] = np.arange(n_items)
    new_id[others] = n_items + np.arange(len(others))
    rel_seen = pd.unique(raw[:, 1])
    new_rel = np.full(len(RELATIONS), -1, dtype=np.int64)
    new_rel[rel_seen] = np.arange(len(rel_seen))
    triples = np.column_stack([new_id[raw[:, 0]], new_rel[raw[:, 1]], new_id[raw[:, 2]]])
    entities = np.concatenate([names[:n_items], names[others]]).astype(str)
    relations = np.asarray(RELATIONS)[rel_seen].astype(str)
    return triples.astype(np.int64), entities, relations


def _interactions(c: SyntheticConfig, seed: int, song_f: np.ndarray, genre_f: np.ndarray,
                  pop_bias: np.ndarray) -> pd.DataFrame:
    """Rows (user, item, value=plays, timestamp), sorted by user then time."""
    d = c.latent_dim
    rng = _rng(seed, _USERS)
    genre_share = (np.arange(c.n_genres) + 1.0) ** -0.5
    genre_share = rng.permutation(genre_share / genre_share.sum())
    first, second = (rng.choice(c.n_genres, size=c.n_users, p=genre_share) for _ in range(2))
    taste = (genre_f[first] + USER_SECOND_GENRE * genre_f[second]
             + USER_SPREAD * rng.standard_normal((c.n_users, d)))  # [n_users, d]
    counts = _activity(c, rng)  # [n_users]
    starts = START_TIME + rng.random(c.n_users) * START_SPREAD_S  # [n_users]

    user_f = (taste / (np.sqrt(d) * c.temperature)).astype(np.float32)  # [n_users, d]
    item_f = song_f.astype(np.float32)  # [n_items, d]
    play_f = (taste / np.sqrt(d)).astype(np.float32)

    if c.candidates is not None:  # candidate pools: half uniform, half Zipf over the ranks
        pool_draw = _PoolProposal(pop_bias, c.popularity_exponent)
        # Target P ∝ exp(taste + bias); a candidate drawn from the proposal gets logit
        # taste + bias - log(proposal) (sampling-importance-resampling).
        pool_bias = (pop_bias - np.log(pool_draw.probability)).astype(np.float32)  # [n_items]

    def chunk(job: tuple[int, np.ndarray]) -> tuple[np.ndarray, ...]:
        index, users = job  # [chunk] user ids of similar activity
        rng = _rng(seed, _INTERACTIONS, index)
        if c.candidates is None:
            logits = user_f[users] @ item_f.T  # [chunk, n_items]
            logits += pop_bias
            chosen, valid = _gumbel_topk(logits, counts[users], rng)  # [chunk, k_max]
            del logits
        else:
            chosen, valid = _pooled_topk(user_f[users], item_f, pool_bias, pool_draw,
                                         counts[users], c.candidates, rng)
        k = valid.sum(axis=1)  # [chunk] = counts[users] (fewer only if a pool lacked songs)
        # Listening order: random among a user's songs (valid ones first).
        order = np.argsort(np.where(valid, rng.random(valid.shape), 2.0), axis=1, kind="stable")
        chosen = np.take_along_axis(chosen, order, axis=1)
        # Plays: 1 + Poisson(play_rate * exp(z)), z = taste z-scored among the user's songs.
        affinity = np.einsum("ud,ukd->uk", play_f[users], item_f[chosen])  # [chunk, k_max]
        mean = np.where(valid, affinity, 0).sum(1, keepdims=True) / k[:, None]
        var = np.where(valid, (affinity - mean) ** 2, 0).sum(1, keepdims=True) / k[:, None]
        z = np.clip((affinity - mean) / np.sqrt(var + 1e-12), -4, 4)
        plays = 1 + rng.poisson(c.play_rate * np.exp(z))
        gaps = 1 + np.floor(rng.exponential(MEAN_GAP_S, size=valid.shape))
        times = starts[users, None] + np.cumsum(gaps, axis=1)  # [chunk, k_max]
        user_rows = np.broadcast_to(users[:, None], valid.shape)
        return user_rows[valid], chosen[valid], plays[valid], times[valid]

    # Chunks of users sorted by activity, so that a chunk's rows pad little to its k_max.
    by_activity = np.argsort(counts, kind="stable")  # [n_users]
    bounds = (_chunks(c.n_users, c.n_items) if c.candidates is None
              else _pool_chunks(_pool_sizes(counts[by_activity], c.candidates, c.n_items)))
    jobs = [(index, by_activity[start:stop]) for index, (start, stop) in enumerate(bounds)]
    workers = min(len(jobs), os.cpu_count() or 1, 8)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL in the heavy parts
            parts = list(pool.map(chunk, jobs))
    else:
        parts = [chunk(job) for job in jobs]
    user, item, plays, times = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(user, kind="stable")  # by user; each user's rows are already in time order
    return pd.DataFrame({
        "user": user[order].astype(np.int64), "item": item[order].astype(np.int64),
        "value": plays[order].astype(np.float64), "timestamp": times[order].astype(np.float64),
    })


def _pool_sizes(counts: np.ndarray, candidates: int, n_items: int) -> np.ndarray:
    """[n] candidate-pool size of each user: max(candidates, 2 x activity), at most n_items."""
    return np.minimum(np.maximum(candidates, 2 * counts), n_items)


def _pool_chunks(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Chunks of users (sorted by activity, so ``sizes`` ascends) of at most POOL_CELLS padded
    cells each (rows x the chunk's largest pool), at least one user each."""
    bounds, start, n = [], 0, len(sizes)
    while start < n:  # one iteration per chunk
        window = sizes[start:start + POOL_CELLS // int(sizes[start]) + 1]  # longest possible
        fits = np.arange(1, len(window) + 1) * window <= POOL_CELLS
        stop = start + max(1, int(fits.sum()))  # fits is a prefix: the products ascend
        bounds.append((start, stop))
        start = stop
    return bounds


class _PoolProposal:
    """Candidate proposal: with probability 1/2 a uniform song, else a song drawn by its
    popularity rank from a Zipf law (continuous inverse CDF, so O(1) per draw)."""

    def __init__(self, pop_bias: np.ndarray, exponent: float):
        self.n, self.s = len(pop_bias), float(exponent)
        self.by_rank = np.argsort(-pop_bias, kind="stable")  # [n] the song of each rank
        edges = self._cdf(np.arange(1, self.n + 2, dtype=np.float64))  # [n + 1]
        zipf = np.empty(self.n)
        zipf[self.by_rank] = np.diff(edges)  # [n] P(rank of the song)
        self.probability = 0.5 / self.n + 0.5 * zipf  # [n] per song

    def _cdf(self, x: np.ndarray) -> np.ndarray:
        """G(x) of the density ∝ x^-s on [1, n + 1)."""
        top = self.n + 1.0
        if abs(self.s - 1.0) < 1e-9:
            return np.log(x) / np.log(top)
        return (x ** (1 - self.s) - 1) / (top ** (1 - self.s) - 1)

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        u = rng.random(shape)  # [shape]: u < 1/2 picks uniform, else Zipf
        top = self.n + 1.0
        v = np.clip(2 * u - 1, 0, 1)
        if abs(self.s - 1.0) < 1e-9:
            x = top ** v
        else:
            x = (1 + v * (top ** (1 - self.s) - 1)) ** (1 / (1 - self.s))
        rank = np.clip(x.astype(np.int64), 1, self.n)  # [shape] 1..n
        uniform = np.minimum((2 * u * self.n).astype(np.int64), self.n - 1)
        return np.where(u < 0.5, uniform, self.by_rank[rank - 1])


def _pooled_topk(user_f: np.ndarray, item_f: np.ndarray, pool_bias: np.ndarray,
                 proposal: _PoolProposal, counts: np.ndarray, candidates: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_gumbel_topk` over a per-user candidate pool instead of the whole catalogue.

    Args:
        user_f: [rows, d] scaled tastes; item_f: [n_items, d]; pool_bias: [n_items] logit offset
            (popularity bias minus log proposal); counts: [rows] songs per user.
    Returns:
        chosen [rows, k_max] int64 item ids and valid [rows, k_max] bool. Repeated candidates
        count once; a user whose pool holds fewer distinct songs than its count gets them all.
    """
    size = int(_pool_sizes(counts, candidates, len(item_f)).max())
    pool = proposal.draw((len(counts), size), rng)  # [rows, size]
    pool.sort(axis=1)  # repeats adjacent
    repeat = np.zeros(pool.shape, dtype=bool)
    repeat[:, 1:] = pool[:, 1:] == pool[:, :-1]
    logits = np.matmul(item_f[pool], user_f[:, :, None])[..., 0] + pool_bias[pool]  # [rows, size]
    logits[repeat] = -np.inf
    distinct = size - repeat.sum(axis=1)  # [rows]
    chosen, valid = _gumbel_topk(logits, np.minimum(counts, distinct), rng)  # pool positions
    return np.take_along_axis(pool, chosen, axis=1).astype(np.int64), valid


def _item_attrs(c: SyntheticConfig, artist_of_song: np.ndarray, album_of_song: np.ndarray,
                genre_of_artist: np.ndarray, tag_table: np.ndarray) -> pd.DataFrame:
    """Display text per song: name ("Artist 12 – Song 3"), artist, album, genre, tags."""
    artist = pd.Series(artist_of_song)
    track = artist.groupby(artist).cumcount().to_numpy() + 1  # [n_items] index within artist
    artist_name = "Artist " + artist.astype(str)
    tag_names = _names(TAGS, c.n_tags).astype(object)
    tags = pd.Series([""] * c.n_items, dtype=object)
    for col in range(tag_table.shape[1]):  # a handful of columns
        has = tag_table[:, col] >= 0
        sep = "" if col == 0 else "; "
        tags[has] = tags[has] + sep + tag_names[tag_table[has, col]]
    return pd.DataFrame({
        "name": artist_name + " – Song " + pd.Series(track).astype(str),
        "artist": artist_name,
        "album": "Album " + pd.Series(album_of_song).astype(str),
        "genre": pd.Series(_names(GENRES, c.n_genres)[genre_of_artist[artist_of_song]]),
        "tags": tags,
    }).astype(str)
