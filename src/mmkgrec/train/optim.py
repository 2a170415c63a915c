"""The optimiser: Adam, or SparseAdam on the large ID tables plus Adam on the rest (MixedAdam)."""

from __future__ import annotations

import torch
from torch import nn

from mmkgrec.errors import ConfigError


def sparsify(model: nn.Module) -> dict[str, tuple[nn.Embedding, bool]]:
    """Switch the model's ID tables to sparse gradients: ``nn.Embedding`` modules with at least
    ``min(n_users, n_items)`` rows (users, items, entities; not the few relation embeddings).

    Returns:
        parameter name -> (module, its former ``sparse`` flag), to restore after training.
    """
    sizes = [getattr(model, key, None) for key in ("n_users", "n_items")]
    floor = min([s for s in sizes if s] or [0])
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings >= floor:
            out[f"{name}.weight" if name else "weight"] = (module, module.sparse)
            module.sparse = True
    if not out:
        raise ConfigError("sparse_embeddings=true but the model has no embedding table with "
                          f">= {floor} rows")
    return out


def make_optimizer(model: nn.Module, sparse: dict, lr: float):
    """Adam over every parameter; with sparse tables, SparseAdam for them and Adam for the rest."""
    if not sparse:
        return torch.optim.Adam(model.parameters(), lr=lr)
    tables = {id(module.weight): name for name, (module, _) in sparse.items()}
    dense = [p for p in model.parameters() if id(p) not in tables]
    sparse_params = {tables[id(p)]: p for p in model.parameters() if id(p) in tables}
    return MixedAdam(dense, sparse_params, lr)


class MixedAdam:
    """Adam (dense parameters) + SparseAdam (row-sparse embedding tables) behind one interface.

    ``state_dict`` / ``load_state_dict`` use the ``torch.optim`` layout (parameters numbered
    across Adam's groups, then SparseAdam's), so checkpoints store it like any optimizer.
    """

    def __init__(self, dense: list[nn.Parameter], sparse: dict[str, nn.Parameter], lr: float):
        self.sparse_params = sparse  # name -> parameter
        self.parts: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam(list(sparse.values()), lr=lr)]
        if dense:
            self.parts.insert(0, torch.optim.Adam(dense, lr=lr))

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for part in self.parts:
            sub = part.state_dict()
            state.update({index + offset: slots for index, slots in sub["state"].items()})
            for group in sub["param_groups"]:
                groups.append({**group, "params": [index + offset for index in group["params"]]})
            offset += sum(len(group["params"]) for group in sub["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = list(state_dict["param_groups"])
        offset = 0
        for part in self.parts:
            mine, groups = groups[:len(part.param_groups)], groups[len(part.param_groups):]
            indices = [i for group in mine for i in group["params"]]
            part.load_state_dict({
                "state": {i - offset: s for i, s in state_dict["state"].items() if i in indices},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine],
            })
            offset += len(indices)


def check_sparse_gradients(params: dict[str, nn.Parameter], model_name: str) -> None:
    """ConfigError when a table meant for SparseAdam got a dense gradient."""
    for name, param in params.items():
        if param.grad is not None and not param.grad.is_sparse:
            raise ConfigError(
                f"sparse_embeddings: {model_name}'s table {name} received a dense gradient: the "
                f"model reads the whole table in a step (e.g. l2_scope='all', or graph "
                f"propagation as in LightGCN); use sparse_embeddings=false or l2_scope='batch'")
