"""MKRLN (Tao et al., "MKRLN: Multi-modal knowledge-aware reinforcement learning network for
explainable recommendation", Knowledge-Based Systems 2021) and, without modalities, PGPR (Xian
et al., "Reinforcement Knowledge Graph Reasoning for Explainable Recommendation", SIGIR 2019).

An agent walks from a user over the collaborative multi-modal KG and recommends the items it
reaches; each recommended item comes with the path that reached it.

- **Environment** (:class:`~mmkgrec.evaluate.explanations.PathGraph`, built from KGAT's
  :class:`~mmkgrec.models.kgat.CollaborativeKG`): nodes are entities ``0..E-1`` (items
  ``0..I-1``) and users ``E..E+U-1``; edges are the KG triples both ways (relation ``r`` and its
  inverse ``r + R``), ``user -played-> item`` for the TRAIN positives only and its reverse
  ``item -played by-> user`` (``collaborative_paths``; off: no user is reachable after the
  start), plus a self-loop action at every step (relation ``2R + 2``). Paths have ``max_hops``
  steps (3: e.g. user -> item -> entity -> item, or user -> item -> user -> item). Nodes already
  on the path are not revisited (PGPR). The actions of a state are the self-loop plus the
  ``max_actions`` out-edges of its node with the highest pretrained score for its user (PGPR's
  user-conditional pruning): ``<u + r_played, t>`` for an item tail, ``<u, t>`` for a user tail,
  ``<u + r_played + r, t>`` for another entity reached by relation ``r``. Actions are padded
  tensors gathered from the CSR graph for all states at once (a ragged gather, a segmented
  top-N by two stable sorts and a scatter): no Python loop over users or paths, only the fixed
  loop over hops.
- **Pretrained embeddings** (PGPR's first step, :meth:`MKRLN.pretrain`): TransE-style
  translation vectors of users, entities and relations with PGPR's dot-product score
  ``<h + r, t>``, trained by BPR against a corrupted tail of the same kind (an item for
  ``played``, an entity for KG triples) on the TRAIN interactions and the KG triples; the
  inverse of a relation is ``-r``. Frozen afterwards. It runs once, at the start of the first
  training epoch (:meth:`MKRLN.start_epoch`), and a persistent ``pretrained`` flag keeps a
  resumed or reloaded model from running it again.
- **State and policy**: ``s_t = [u; e_t; h_t; step_t (; c_t)]`` with ``u``, ``e_t`` the frozen
  user / current-node embeddings, ``h_t`` a GRU summary of the path so far (relation and node
  embeddings of every step), ``step_t`` a learned hop embedding and — MKRLN — ``c_t`` the
  current item's **multi-modal context**: each modality vector of the item (z-scored with train
  statistics, one learned projection each, absent ones masked) weighted by an attention
  ``softmax_k <W_q [u; step_t], m_k> / sqrt(d)`` over the item's present modalities (zero at
  non-item nodes and at items without content). The paper brings visual features in at every
  step to choose the next one; here every modality of the MMKG. Two ELU layers (dropout) feed
  an actor ``a = [a_r; a_e]`` whose logit for action ``(r, t)`` is ``<a_r, r> + <a_e, e_t'>``
  (content-based, so any graph size works; PGPR scores a fixed number of action slots) and a
  critic ``V(s_t)``. Without modalities (``use_modalities=false``, or a dataset without any)
  the model is PGPR with that state, registered as ``pgpr``.
- **Learning** (:meth:`MKRLN.training_loss`, called by the shared Trainer for each batch of
  its rows; only the batch's users are used, so users are sampled in proportion to their train
  positives): one episode per user, actions sampled from the policy (Gumbel-max, seeded per
  epoch); terminal soft reward ``max(0, s(u, i) / max_j s(u, j))`` with the pretrained
  ``s(u, i) = <u + r_played, i>`` when the walk ends at an item ``i`` not in the user's TRAIN
  history, else 0; returns ``G_t = gamma^(T-1-t) R``; loss = policy gradient with the critic as
  baseline ``-log pi(a_t|s_t) (G_t - V(s_t))`` + ``critic_weight`` (G_t - V)^2 -
  ``entropy_weight`` H(pi(.|s_t)), averaged over steps and episodes. The Trainer's ``l2`` is
  not used.
- **Inference** (:meth:`MKRLN.score_users`, :meth:`MKRLN.recommend_paths`): beam search from
  every user, keeping the ``beam_widths[t]`` most probable actions of every path at hop ``t``
  (PGPR's per-path expansion); each reached item not in the TRAIN history keeps its most
  probable path. Reached items are ranked by ``rank_by``: ``reward`` (PGPR: the pretrained
  score ``s(u, i)``) or ``probability`` (the path probability). Items the search does not reach
  are ranked AFTER every reached item, by the embedding score ``s(u, i)``, so every item gets a
  score and full-ranking metrics compare with every other model: the logit of a reached item is
  its ranking value shifted per user above the best unreached score. ``forward`` returns the
  same scores for (user, item) pairs.
- **New listeners** (:meth:`MKRLN.walk_from_items`, :meth:`MKRLN.score_histories`; the
  ``UsersFromItems`` and ``WalksPaths`` capabilities): a listener given only by liked items has no
  user node; their vector is the TransE estimate ``u = mean_i(e_i) - r_played`` (``u + r_played
  ~ i`` for the items they played), and the walk's first step goes to one of the liked items
  (relation ``played``, chosen by the policy like any step), then on through the train graph. Such
  paths start at node ``n_nodes`` (the listener, who has no node). Liked items are not rewarded
  and not recommended, as train positives are for a user.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from mmkgrec.data.csr import csr_rows
from mmkgrec.data.dataset import MMKG
from mmkgrec.data.split import Split
from mmkgrec.evaluate.explanations import PathGraph, PathRecommendations
from mmkgrec.evaluate.metrics import rank_topk
from mmkgrec.models.base import ModelConfig, Recommender
from mmkgrec.models.kgat import CollaborativeKG
from mmkgrec.models.layers import register_modalities


class MKRLNConfig(ModelConfig):
    dim: int = Field(64, ge=1)  # TransE width (users, entities, relations)
    hidden: int = Field(256, ge=1)  # policy MLP width
    max_hops: int = Field(3, ge=1)  # path length
    max_actions: int = Field(50, ge=1)  # user-conditional pruning: out-edges kept per state
    collaborative_paths: bool = True  # item -played by-> user edges (user -> item -> user -> item)
    use_modalities: bool = True  # MKRLN's multi-modal state; False: PGPR
    modalities: list[str] | None = None  # None: every modality of the dataset
    pretrain_epochs: int = Field(100, ge=0)  # TransE epochs over train pairs + KG triples
    pretrain_batch_size: int = Field(1024, ge=1)
    pretrain_lr: float = Field(5e-3, gt=0)
    pretrain_l2: float = Field(3e-2, ge=0)  # on the batch's vectors
    gamma: float = Field(0.99, gt=0, le=1)  # discount
    entropy_weight: float = Field(1e-3, ge=0)
    critic_weight: float = Field(1.0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    beam_widths: list[PositiveInt] = Field(default_factory=lambda: [25, 10, 5])  # per hop
    beam_batch_users: int = Field(128, ge=1)  # users per beam-search block
    rank_by: Literal["reward", "probability"] = "reward"

    @model_validator(mode="after")
    def _check_widths(self):
        if len(self.beam_widths) != self.max_hops:
            raise ValueError(f"beam_widths needs one width per hop: {self.max_hops} hops, "
                             f"got {self.beam_widths}")
        return self


class MKRLN(Recommender):
    """Policy-guided path reasoning over the collaborative MMKG. See the module docstring."""

    name = "mkrln"
    Config = MKRLNConfig
    config: MKRLNConfig
    # buffers (registered in __init__): the train graph's CSR and the users' TRAIN histories
    indptr: Tensor  # [N + 1]
    edge_relations: Tensor  # [M]
    edge_tails: Tensor  # [M]
    history_indptr: Tensor  # [U + 1]
    history_items: Tensor  # [nnz]
    history_keys: Tensor  # [nnz] user * I + item, sorted
    pretrained: Tensor  # [] bool
    modality_names: list[str]

    def __init__(self, dataset: MMKG, split: Split, config: MKRLNConfig, seed: int = 0):
        super().__init__(dataset, split, config)
        self.seed = seed
        ckg = CollaborativeKG.build(dataset, split)  # KG both ways + TRAIN positives both ways
        keep = (np.ones(ckg.n_edges, dtype=bool) if config.collaborative_paths
                else ckg.relations != ckg.interact + 1)
        heads, relations, tails = ckg.heads[keep], ckg.relations[keep], ckg.tails[keep]
        n_kg = dataset.n_relations
        self.n_entities, self.n_kg_relations = ckg.n_entities, n_kg
        self.n_nodes = ckg.n_nodes
        self.played, self.self_loop = ckg.interact, ckg.n_relations  # 2R, 2R + 2
        names = ([str(r) for r in dataset.relations]
                 + [f"{r} (inverse)" for r in dataset.relations]
                 + ["played", "played by", "self-loop"])
        self.graph = PathGraph(heads=heads, relations=relations, tails=tails,
                               n_items=dataset.n_items, n_entities=ckg.n_entities,
                               n_users=dataset.n_users, relation_names=tuple(names),
                               self_loop=self.self_loop)
        indptr = np.searchsorted(heads, np.arange(self.n_nodes + 1))  # heads sorted
        history_indptr, history_items = split.user_history()  # TRAIN only
        history_users = np.repeat(np.arange(self.n_users), np.diff(history_indptr))
        for name, value in (("indptr", indptr), ("edge_relations", relations),
                            ("edge_tails", tails), ("history_indptr", history_indptr),
                            ("history_items", history_items),
                            ("history_keys", history_users * self.n_items + history_items)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.int64),
                                 persistent=False)  # derived from the data: not checkpointed

        d = config.dim
        self.node_emb = nn.Embedding(self.n_nodes, d)  # entities, then users
        self.relation_emb = nn.Embedding(n_kg + 1, d)  # KG relations, then "played"
        for table in (self.node_emb, self.relation_emb):
            nn.init.xavier_uniform_(table.weight)
        self.register_buffer("pretrained", torch.zeros((), dtype=torch.bool))
        self.pretrain_seconds = 0.0

        self.self_loop_emb = nn.Parameter(torch.empty(d).normal_(0, 0.1))
        self.step_emb = nn.Embedding(config.max_hops, d)
        self.path_rnn = nn.GRUCell(2 * d, d)
        if config.use_modalities:
            register_modalities(self, dataset, split, config.modalities)
        else:
            self.modality_names = []
        self.modality_proj = nn.ModuleList(
            nn.Linear(dataset.modalities[n].shape[1], d) for n in self.modality_names)
        self.modality_query = nn.Linear(2 * d, d) if self.modality_names else None
        state = 4 * d + (d if self.modality_names else 0)
        self.body = nn.Sequential(nn.Linear(state, config.hidden), nn.ELU(),
                                  nn.Dropout(config.dropout),
                                  nn.Linear(config.hidden, config.hidden), nn.ELU(),
                                  nn.Dropout(config.dropout))
        self.actor = nn.Linear(config.hidden, 2 * d)
        self.critic = nn.Linear(config.hidden, 1)
        self._generator: torch.Generator | None = None

    # ---- the graph --------------------------------------------------------------------------
    def path_graph(self) -> PathGraph:
        """The train graph the paths walk on (for :mod:`mmkgrec.evaluate.explanations`)."""
        return self.graph

    def user_nodes(self, users: Tensor) -> Tensor:
        return self.n_entities + users

    def _tables(self) -> dict[str, Tensor]:
        """Frozen TransE tables: node vectors [N, d], relation vectors of every graph relation
        [2R + 3, d] (only the self-loop vector is trainable), the user-independent part of each
        edge's pruning score [M] and of the user-item score [I]."""
        nodes = self.node_emb.weight.detach()  # [N, d]
        kg = self.relation_emb.weight.detach()  # [R + 1, d]
        r = self.n_kg_relations
        frozen = torch.cat([kg[:r], -kg[:r], kg[r:], -kg[r:]])  # [2R + 2, d]
        played = kg[r]  # [d]
        tails = self.edge_tails
        tail_vectors = nodes[tails]  # [M, d]
        entity = (tails >= self.n_items) & (tails < self.n_entities)  # [M] non-item entity
        not_user = tails < self.n_entities
        edge_bias = (tail_vectors @ played) * not_user + (
            tail_vectors * frozen[self.edge_relations]).sum(1) * entity  # [M]
        return {"nodes": nodes, "relations": torch.cat([frozen, self.self_loop_emb[None]]),
                "edge_bias": edge_bias, "item_bias": nodes[:self.n_items] @ played}

    def _user_scores(self, users: Tensor, tables: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(<u, n> for every node [B, N], pretrained user-item score s(u, i) [B, I])."""
        nodes = tables["nodes"]
        dots = nodes[self.user_nodes(users)] @ nodes.T  # [B, N]
        return dots, dots[:, :self.n_items] + tables["item_bias"]

    def _in_history(self, users: Tensor, items: Tensor) -> Tensor:
        """[...] bool: (user, item) is a TRAIN positive."""
        keys = users * self.n_items + items
        known = self.history_keys
        if not len(known):
            return torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
        return known[at] == keys

    def actions(self, dots: Tensor, owners: Tensor, nodes: Tensor, visited: Tensor,
                tables: dict[str, Tensor], max_actions: int | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The padded action space of S states.

        Args:
            dots: [B, N] ``<u, n>`` of the states' users (:meth:`_user_scores`).
            owners: [S] row of ``dots`` of each state; nodes: [S] current nodes.
            visited: [S, t + 1] nodes already on each path (not revisited).
            max_actions: out-edges kept per state (default ``config.max_actions``).

        Returns:
            ``(relations, tails, mask)``, each ``[S, 1 + A]``: slot 0 is the self-loop, then the
            kept out-edges (in CSR order; best first where pruned); ``mask`` False on padding.
        """
        limit = self.config.max_actions if max_actions is None else max_actions
        device = nodes.device
        n_states = len(nodes)
        start = self.indptr[nodes]
        degree = self.indptr[nodes + 1] - start  # [S]
        state = torch.repeat_interleave(torch.arange(n_states, device=device), degree)
        offset = torch.arange(len(state), device=device) - torch.repeat_interleave(
            degree.cumsum(0) - degree, degree)  # [M'] position within the state's edges
        edge = start[state] + offset  # [M'] CSR positions of every candidate
        fresh = ~(self.edge_tails[edge].unsqueeze(1) == visited[state]).any(1)  # no revisits
        big = degree > limit  # [S] states whose edges are pruned
        on_big = big[state]  # [M']
        keep = fresh & ~on_big  # small states keep every fresh edge, in CSR order
        before = torch.cumsum(keep, 0) - keep.long()  # kept edges before each candidate
        first = degree.cumsum(0) - degree  # [S] first candidate of each state
        slots = [1 + before[keep] - before[first[state[keep]]]]
        states, edges = [state[keep]], [edge[keep]]
        if bool(on_big.any()):
            # Pruning: the big states' candidates as a padded [S_big, D] table of pretrained
            # scores (revisits at -inf), the best `limit` of each row.
            row = (torch.cumsum(big, 0) - 1)[state[on_big]]  # row of the state in the table
            score = (dots[owners[state[on_big]], self.edge_tails[edge[on_big]]]
                     + tables["edge_bias"][edge[on_big]]).masked_fill(~fresh[on_big],
                                                                       float("-inf"))
            table = score.new_full((int(big.sum()), int(degree[big].max())), float("-inf"))
            table[row, offset[on_big]] = score
            best, position = table.topk(limit, dim=1)  # [S_big, limit], best first
            found = torch.isfinite(best)
            big_states = torch.nonzero(big).squeeze(1).unsqueeze(1).expand_as(position)
            states.append(big_states[found])
            edges.append((start[big_states] + position)[found])
            slots.append((1 + torch.arange(limit, device=device)).expand_as(position)[found])
        state, edge, slot = torch.cat(states), torch.cat(edges), torch.cat(slots)
        counts = torch.bincount(state, minlength=n_states)
        width = 1 + (int(counts.max()) if n_states and len(state) else 0)
        relations = torch.full((n_states, width), self.self_loop, dtype=torch.int64,
                               device=device)
        tails = nodes.unsqueeze(1).repeat(1, width)
        mask = torch.zeros(n_states, width, dtype=torch.bool, device=device)
        mask[:, 0] = True
        relations[state, slot] = self.edge_relations[edge]
        tails[state, slot] = self.edge_tails[edge]
        mask[state, slot] = True
        return relations, tails, mask

    # ---- the policy -------------------------------------------------------------------------
    def _modality_context(self, users: Tensor, steps: Tensor, nodes: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """(context [S, d], attention [S, K]) of the current items' modalities (zero / no
        weight at non-item nodes and for absent modalities)."""
        is_item = nodes < self.n_items
        items = nodes.clamp(max=self.n_items - 1)
        vectors = torch.stack([proj(getattr(self, f"features_{k}")[items].float())
                               for k, proj in enumerate(self.modality_proj)], dim=1)  # [S, K, d]
        present = torch.stack([getattr(self, f"present_{k}")[items]
                               for k in range(len(self.modality_proj))], dim=1)  # [S, K]
        present = present & is_item.unsqueeze(1)
        assert self.modality_query is not None  # built when the model has modalities
        query = self.modality_query(torch.cat([users, steps], dim=1))  # [S, d]
        logits = (vectors * query.unsqueeze(1)).sum(-1) / math.sqrt(query.shape[1])  # [S, K]
        weights = torch.softmax(logits.masked_fill(~present, float("-inf")), dim=1)
        weights = torch.where(present, weights, torch.zeros_like(weights))  # all absent: 0
        return (weights.unsqueeze(-1) * vectors).sum(1), weights

    def _hidden(self, users: Tensor, nodes: Tensor, history: Tensor, step: int,
                tables: dict[str, Tensor], node_vectors: Tensor | None = None) -> Tensor:
        """The policy's hidden state [S, hidden] from user vectors [S, d], nodes [S], the path
        summary [S, d] and the hop index; ``node_vectors`` [S, d] replaces the nodes' embeddings
        (a new listener's start, which has no node)."""
        steps = self.step_emb.weight[step].expand(len(nodes), -1)  # [S, d]
        current = tables["nodes"][nodes] if node_vectors is None else node_vectors
        parts = [users, current, history, steps]
        if self.modality_names:
            parts.append(self._modality_context(users, steps, nodes)[0])
        return self.body(torch.cat(parts, dim=1))

    def _logits(self, hidden: Tensor, relations: Tensor, tails: Tensor, mask: Tensor,
                tables: dict[str, Tensor]) -> Tensor:
        """Masked action logits [S, A]: ``<a_r, r> + <a_e, e_t'>``."""
        a_rel, a_node = self.actor(hidden).split(self.config.dim, dim=1)  # [S, d] each
        by_relation = torch.gather(a_rel @ tables["relations"].T, 1, relations)  # [S, A]
        by_node = torch.bmm(tables["nodes"][tails], a_node.unsqueeze(2)).squeeze(2)  # [S, A]
        return (by_relation + by_node).masked_fill(~mask, float("-inf"))

    def _advance(self, history: Tensor, relations: Tensor, nodes: Tensor,
                 tables: dict[str, Tensor]) -> Tensor:
        """The path summary after a step along ``relations`` [S] to ``nodes`` [S]."""
        step = torch.cat([tables["relations"][relations], tables["nodes"][nodes]], dim=1)
        return self.path_rnn(step, history)

    # ---- stage 1: TransE ----------------------------------------------------------------------
    def pretrain(self, rng: np.random.Generator | int | None = None) -> None:
        """PGPR's first step: fit the translation embeddings on the TRAIN interactions and the
        KG triples (see the module docstring), then mark the model as pretrained."""
        cfg = self.config
        rng = np.random.default_rng(self.seed if rng is None else rng)
        device = self.node_emb.weight.device
        start = time.perf_counter()
        history_users = torch.repeat_interleave(
            torch.arange(self.n_users, device=device), self.history_indptr.diff())
        kg = self.graph.relations < self.n_kg_relations  # forward KG edges
        heads = torch.cat([self.user_nodes(history_users),
                           torch.as_tensor(self.graph.heads[kg], device=device)])
        relations = torch.cat([torch.full_like(history_users, self.n_kg_relations),
                               torch.as_tensor(self.graph.relations[kg], device=device)])
        tails = torch.cat([self.history_items,
                           torch.as_tensor(self.graph.tails[kg], device=device)])
        is_pair = (relations == self.n_kg_relations).cpu().numpy()  # corrupt: item / entity
        n = len(heads)
        tables = (self.node_emb, self.relation_emb)
        parameters = [table.weight for table in tables]
        was_sparse = [table.sparse for table in tables]
        for table in tables:  # row-sparse gradients: a step costs O(batch), not O(table)
            table.sparse = True
        try:
            optimizer = torch.optim.SparseAdam(parameters, lr=cfg.pretrain_lr)
            for _ in range(cfg.pretrain_epochs if n else 0):
                order = torch.as_tensor(rng.permutation(n), device=device)
                corrupted = torch.as_tensor(
                    np.where(is_pair, rng.integers(0, self.n_items, n),
                             rng.integers(0, self.n_entities, n)), device=device)
                for begin in range(0, n, cfg.pretrain_batch_size):
                    batch = order[begin:begin + cfg.pretrain_batch_size]
                    h = self.node_emb(heads[batch])
                    r = self.relation_emb(relations[batch])
                    t, t_neg = self.node_emb(tails[batch]), self.node_emb(corrupted[batch])
                    query = h + r
                    margin = (query * t).sum(1) - (query * t_neg).sum(1)
                    loss = F.softplus(-margin).mean() + cfg.pretrain_l2 * 0.5 * (
                        h.pow(2) + r.pow(2) + t.pow(2) + t_neg.pow(2)).sum(1).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        finally:
            for table, sparse in zip(tables, was_sparse):
                table.sparse = sparse
                table.weight.grad = None
        self.pretrained.fill_(True)
        self.pretrain_seconds = time.perf_counter() - start

    def start_epoch(self, epoch: int, rng: np.random.Generator) -> None:
        """Pretrain once (first epoch of a fresh model), then seed this epoch's episodes."""
        if not bool(self.pretrained):
            self.pretrain(rng)
        device = self.node_emb.weight.device
        self._generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))

    # ---- stage 2: policy gradient -------------------------------------------------------------
    def training_loss(self, users: Tensor, items: Tensor, third: Tensor) -> Tensor:
        """The actor-critic loss of one episode per user of the Trainer's batch (``items`` and
        ``third`` are not used). See the module docstring."""
        cfg = self.config
        if not bool(self.pretrained):
            self.pretrain()
        if self._generator is None or self._generator.device != users.device:
            self._generator = torch.Generator(device=users.device).manual_seed(self.seed)
        tables = self._tables()
        dots, scores = self._user_scores(users, tables)  # [B, N], [B, I]
        user_vectors = tables["nodes"][self.user_nodes(users)]  # [B, d]
        batch = len(users)
        owners = torch.arange(batch, device=users.device)
        nodes = self.user_nodes(users)
        visited = nodes.unsqueeze(1)
        history = user_vectors.new_zeros(batch, cfg.dim)
        log_probs, values, entropies = [], [], []
        for step in range(cfg.max_hops):
            relations, tails, mask = self.actions(dots, owners, nodes, visited, tables)
            hidden = self._hidden(user_vectors, nodes, history, step, tables)
            log_pi = torch.log_softmax(self._logits(hidden, relations, tails, mask, tables), 1)
            pi = log_pi.exp()
            entropies.append(-(pi * log_pi.masked_fill(~mask, 0.0)).sum(1))
            uniform = torch.rand(log_pi.shape, generator=self._generator, device=users.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))
            choice = (log_pi.detach() + gumbel).argmax(1, keepdim=True)  # [B, 1], masked: -inf
            log_probs.append(log_pi.gather(1, choice).squeeze(1))
            values.append(self.critic(hidden).squeeze(1))
            relation = relations.gather(1, choice).squeeze(1)
            nodes = tails.gather(1, choice).squeeze(1)
            history = self._advance(history, relation, nodes, tables)
            visited = torch.cat([visited, nodes.unsqueeze(1)], dim=1)
        reward = self._reward(users, nodes, scores)  # [B]
        discount = cfg.gamma ** torch.arange(cfg.max_hops - 1, -1, -1, device=users.device,
                                             dtype=reward.dtype)  # [T]
        returns = reward.unsqueeze(1) * discount  # [B, T]
        advantage = returns - torch.stack(values, dim=1)  # [B, T]
        actor = -(torch.stack(log_probs, dim=1) * advantage.detach()).mean()
        critic = advantage.pow(2).mean()
        entropy = torch.stack(entropies, dim=1).mean()
        return actor + cfg.critic_weight * critic - cfg.entropy_weight * entropy

    def _reward(self, users: Tensor, nodes: Tensor, scores: Tensor) -> Tensor:
        """Terminal soft reward [B]: max(0, s(u, i) / max_j s(u, j)) at an item outside the
        TRAIN history, else 0."""
        items = nodes.clamp(max=self.n_items - 1)
        scale = scores.max(dim=1).values.clamp_min(1e-6)  # [B]
        value = (scores.gather(1, items.unsqueeze(1)).squeeze(1) / scale).clamp_min(0.0)
        fresh = (nodes < self.n_items) & ~self._in_history(users, items)
        return torch.where(fresh, value, torch.zeros_like(value))

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def beam_search(self, users: Tensor | None, tables: dict[str, Tensor] | None = None,
                    dots: Tensor | None = None, start: dict[str, Tensor] | None = None
                    ) -> dict[str, Tensor]:
        """Policy-guided beam search from each user: every path keeps its ``beam_widths[t]``
        most probable actions at hop ``t``.

        ``start`` (new listeners, ``users`` None): ``vectors`` [B, d] the listeners' vectors and
        their first actions ``relations`` / ``tails`` / ``mask`` [B, A0]; ``dots`` is then
        required. Their paths start at node ``n_nodes``.

        Returns:
            flat tensors over the P paths found: ``owner`` [P] (row in ``users``), ``nodes``
            [P, H + 1], ``relations`` [P, H], ``step_probs`` [P, H], ``log_prob`` [P].
        """
        tables = self._tables() if tables is None else tables
        if start is None:
            if users is None:
                raise ValueError("beam_search needs users or a start")
            if dots is None:
                dots, _ = self._user_scores(users, tables)
            nodes = self.user_nodes(users)
            user_vectors = tables["nodes"][nodes]  # [B, d]
        else:
            user_vectors = start["vectors"]
            nodes = torch.full((len(user_vectors),), self.n_nodes, dtype=torch.int64,
                               device=user_vectors.device)  # the listener: no node
        n = len(user_vectors)
        owner = torch.arange(n, device=user_vectors.device)
        visited = nodes.unsqueeze(1)
        history = user_vectors.new_zeros(n, self.config.dim)
        relation_path = nodes.new_zeros(n, 0)
        prob_path = user_vectors.new_zeros(n, 0)
        log_prob = user_vectors.new_zeros(n)
        for step, width in enumerate(self.config.beam_widths):
            if step == 0 and start is not None:
                relations, tails, mask = start["relations"], start["tails"], start["mask"]
                hidden = self._hidden(user_vectors, nodes, history, step, tables,
                                      node_vectors=user_vectors)
            else:
                assert dots is not None  # given with a start, computed from users otherwise
                relations, tails, mask = self.actions(dots, owner, nodes, visited, tables)
                hidden = self._hidden(user_vectors[owner], nodes, history, step, tables)
            log_pi = torch.log_softmax(self._logits(hidden, relations, tails, mask, tables), 1)
            best, slot = log_pi.topk(min(width, log_pi.shape[1]), dim=1)  # [S, w]
            alive = torch.isfinite(best)  # fewer actions than the width: padding
            source = torch.arange(len(nodes), device=nodes.device).unsqueeze(1).expand_as(slot)
            source, slot, best = source[alive], slot[alive], best[alive]  # [S']
            relation, nodes = relations[source, slot], tails[source, slot]
            owner = owner[source]
            history = self._advance(history[source], relation, nodes, tables)
            visited = torch.cat([visited[source], nodes.unsqueeze(1)], dim=1)
            relation_path = torch.cat([relation_path[source], relation.unsqueeze(1)], dim=1)
            prob_path = torch.cat([prob_path[source], best.exp().unsqueeze(1)], dim=1)
            log_prob = log_prob[source] + best
        return {"owner": owner, "nodes": visited, "relations": relation_path,
                "step_probs": prob_path, "log_prob": log_prob}

    @torch.no_grad()
    def _rank_block(self, users: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(scores [B, I], best path per item [B, I] (-1: not reached), the beam's paths)."""
        tables = self._tables()
        dots, embedding = self._user_scores(users, tables)  # [B, N], [B, I]
        paths = self.beam_search(users, tables, dots)
        return self._rank_paths(paths, embedding, self._history_mask(users))

    @torch.no_grad()
    def _listener_block(self, history: Tensor, valid: Tensor
                        ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`_rank_block` for listeners given by liked items: history / valid [B, S]."""
        tables = self._tables()
        nodes, played = tables["nodes"], self.relation_emb.weight.detach()[self.n_kg_relations]
        weights = valid.float() / valid.float().sum(1, keepdim=True).clamp(min=1)  # [B, S]
        vectors = torch.einsum("bs,bsd->bd", weights, nodes[history]) - played  # [B, d]
        dots = vectors @ nodes.T  # [B, N]
        embedding = dots[:, :self.n_items] + tables["item_bias"]  # [B, I]
        batch = len(history)
        start = {"vectors": vectors,  # first step: self-loop slot (off), then the liked items
                 "relations": torch.cat([torch.full((batch, 1), self.self_loop, device=history.device),
                                         torch.full_like(history, self.played)], dim=1),
                 "tails": torch.cat([history[:, :1], history], dim=1),
                 "mask": torch.cat([torch.zeros_like(valid[:, :1]), valid], dim=1)}
        paths = self.beam_search(None, tables, dots, start)
        known = torch.zeros(batch, self.n_items, dtype=torch.bool, device=history.device)
        row = torch.arange(batch, device=history.device).unsqueeze(1).expand_as(history)
        known[row[valid], history[valid]] = True  # liked: neither rewarded nor recommended
        return self._rank_paths(paths, embedding, known)

    def _rank_paths(self, paths: dict[str, Tensor], embedding: Tensor, known: Tensor
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Scores [B, I] and best path per item [B, I] from the beam's paths; ``known`` [B, I]
        marks each row's items that no path may reach (train history, liked items)."""
        n_users, n_items = embedding.shape
        end = paths["nodes"][:, -1]
        items = end.clamp(max=n_items - 1)
        ok = (end < n_items) & ~known[paths["owner"], items]
        key = paths["owner"][ok] * n_items + items[ok]
        log_prob = paths["log_prob"][ok]
        best = embedding.new_full((n_users * n_items,), float("-inf")).scatter_reduce(
            0, key, log_prob, "amax")  # [B * I] best path log-probability per item
        winner = log_prob >= best[key]  # ties: the first path found
        index = torch.nonzero(ok).squeeze(1)[winner]
        path_of = torch.full((n_users * n_items,), len(end), dtype=torch.int64,
                             device=embedding.device).scatter_reduce(0, key[winner], index, "amin")
        best, path_of = best.view(n_users, n_items), path_of.view(n_users, n_items)
        reached = torch.isfinite(best)
        path_of = torch.where(reached, path_of, torch.full_like(path_of, -1))
        value = embedding if self.config.rank_by == "reward" else best
        floor = embedding.masked_fill(reached, float("-inf")).max(dim=1, keepdim=True).values
        lowest = value.masked_fill(~reached, float("inf")).min(dim=1, keepdim=True).values
        shift = (floor - lowest + 1.0).nan_to_num(0.0, 0.0, 0.0).clamp_min(0.0)  # [B, 1]
        scores = torch.where(reached, value + shift, embedding)
        return scores, path_of, paths

    def score_users(self, users: Tensor) -> Tensor:
        """Beam-search-derived logits [B, I]: reached items above unreached ones (module
        docstring)."""
        size = self.config.beam_batch_users
        return torch.cat([self._rank_block(users[s:s + size])[0]
                          for s in range(0, len(users), size)]) if len(users) else \
            self.node_emb.weight.new_zeros(0, self.n_items)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pair logits equal to :meth:`score_users` (one beam search per distinct user)."""
        unique, inverse = torch.unique(users, return_inverse=True)
        return self.score_users(unique)[inverse, items]

    def score_histories(self, history: Tensor, valid: Tensor) -> Tensor:
        """Listeners given by liked items (history / valid [B, S]) -> logits [B, I]: the walk
        starts at the liked items (module docstring)."""
        size = self.config.beam_batch_users
        if not len(history):
            return self.node_emb.weight.new_zeros(0, self.n_items)
        return torch.cat([self._listener_block(history[s:s + size], valid[s:s + size])[0]
                          for s in range(0, len(history), size)])

    @torch.no_grad()
    def recommend_paths(self, users, k: int = 10, exclude: tuple | None = None
                        ) -> PathRecommendations:
        """Top-``k`` items of each user with the path that reached them.

        Args:
            users: [n] user ids (numpy, list or tensor).
            k: list length.
            exclude: optional CSR ``(indptr [n_users + 1], items)`` of further items not to
                recommend (e.g. ``split.ranking_exclusions("test")``); TRAIN positives are
                always excluded.

        Returns:
            :class:`~mmkgrec.evaluate.explanations.PathRecommendations` (items without a path
            are those ranked by embedding score after every reached item).
        """
        device = self.node_emb.weight.device
        users = torch.as_tensor(np.asarray(users), dtype=torch.int64, device=device).reshape(-1)
        indptr, items = (exclude if exclude is not None else
                         (self.history_indptr, self.history_items))
        return self._top_paths(users, users, lambda rows: self._rank_block(users[rows]),
                               lambda rows: self._history_mask(users[rows]), indptr, items, k)

    @torch.no_grad()
    def walk_from_items(self, history: Tensor, valid: Tensor, k: int = 10,
                        exclude: tuple | None = None) -> PathRecommendations:
        """Top-``k`` items of listeners given by liked items (history / valid [B, S]) with the
        path that reached them, the walk starting at the liked items; ``users`` of the result
        are the rows ``0..B-1``, paths start at node ``n_nodes``. ``exclude``: optional CSR over
        the rows of further items not to recommend; the liked items always are."""
        device = self.node_emb.weight.device
        history = torch.as_tensor(history, dtype=torch.int64, device=device)
        valid = torch.as_tensor(valid, dtype=torch.bool, device=device)
        rows = torch.arange(len(history), device=device)
        indptr, items = exclude if exclude is not None else (
            np.zeros(len(history) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

        def liked(block: Tensor) -> Tensor:
            mask = torch.zeros(len(block), self.n_items, dtype=torch.bool, device=device)
            picked = valid[block]
            row = torch.arange(len(block), device=device).unsqueeze(1).expand_as(picked)
            mask[row[picked], history[block][picked]] = True
            return mask

        return self._top_paths(rows, rows, lambda block: self._listener_block(
            history[block], valid[block]), liked, indptr, items, k)

    def _top_paths(self, ids: Tensor, rows: Tensor, rank_block, known_mask, indptr, items,
                   k: int) -> PathRecommendations:
        """Top-k with paths, block by block: ``rank_block(rows)`` -> (scores, path_of, paths),
        ``known_mask(rows)`` [b, I] never recommended, ``(indptr, items)`` a CSR over ``ids``."""
        was_training = self.training
        self.eval()
        device = self.node_emb.weight.device
        hops = self.config.max_hops
        indptr = torch.as_tensor(indptr, dtype=torch.int64, device=device)
        items = torch.as_tensor(items, dtype=torch.int64, device=device)
        parts = []
        size = self.config.beam_batch_users
        for begin in range(0, len(rows), size):
            block = torch.arange(begin, min(begin + size, len(rows)), device=device)
            scores, path_of, paths = rank_block(block)
            scores = scores.masked_fill(known_mask(block), float("-inf"))
            top_scores, top_items = rank_topk(scores, indptr, items, k, users=ids[block],
                                              inplace=True)
            index = torch.where(top_items >= 0, path_of.gather(1, top_items.clamp(min=0)),
                                torch.full_like(top_items, -1))  # [b, k] path or -1
            has_path = index >= 0
            safe = index.clamp(min=0)
            if len(paths["owner"]):
                nodes = paths["nodes"][safe]  # [b, k, H + 1]
                relations = paths["relations"][safe]
                probs = paths["step_probs"][safe]
            else:
                nodes = top_items.new_zeros(*top_items.shape, hops + 1)
                relations = top_items.new_zeros(*top_items.shape, hops)
                probs = top_scores.new_zeros(*top_items.shape, hops)
            parts.append((top_items, top_scores, has_path,
                          torch.where(has_path.unsqueeze(-1), nodes, -1),
                          torch.where(has_path.unsqueeze(-1), relations, -1),
                          torch.where(has_path.unsqueeze(-1), probs, float("nan"))))
        self.train(was_training)
        width = min(k, self.n_items)

        def stack(i: int, fill, shape: tuple[int, ...], dtype) -> np.ndarray:
            if not parts:
                return np.full((0, width, *shape), fill, dtype=dtype)
            return torch.cat([p[i] for p in parts]).cpu().numpy().astype(dtype)

        return PathRecommendations(
            users=ids.cpu().numpy(), items=stack(0, -1, (), np.int64),
            scores=stack(1, 0, (), np.float32), has_path=stack(2, False, (), bool),
            nodes=stack(3, -1, (hops + 1,), np.int64), relations=stack(4, -1, (hops,), np.int64),
            step_probs=stack(5, np.nan, (hops,), np.float32))

    def _history_mask(self, users: Tensor) -> Tensor:
        """[B, I] bool: TRAIN positives of ``users``."""
        row, items = csr_rows(self.history_indptr, self.history_items, users)  # [m], [m]
        mask = torch.zeros(len(users), self.n_items, dtype=torch.bool, device=users.device)
        mask[row, items] = True
        return mask


class PGPRConfig(MKRLNConfig):
    use_modalities: Literal[False] = False  # PGPR: the structural state only


class PGPR(MKRLN):
    """PGPR (Xian et al., SIGIR 2019): :class:`MKRLN` without the multi-modal state."""

    name = "pgpr"
    Config = PGPRConfig
    config: PGPRConfig
