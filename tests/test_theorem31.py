"""The Theorem 3.1 check: the exact inner maximum of a linear score, the risks, and the CLI's table."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from training import theorem31


def test_closed_form_range_matches_brute_force_over_the_box():
    """A linear score's extremes over B_inf(x, eps) ∩ [0,1]^d lie at the box's vertices: enumerate all of them."""
    gen = torch.Generator().manual_seed(0)
    d, eps = 8, 0.1
    for _ in range(20):
        w, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn((), generator=gen, dtype=torch.float64)
        x = torch.rand(2, d, generator=gen, dtype=torch.float64)
        x[:, :3] = torch.tensor([0.0, 1.0, 0.05], dtype=torch.float64)  # pixels where the [0,1] clip binds
        f, low, high = theorem31.score_range(w, b, x, eps)
        product = theorem31.worst_product(f, low, high)
        for i in range(len(x)):
            lo, hi = (x[i] - eps).clamp(min=0), (x[i] + eps).clamp(max=1)
            corners = torch.tensor(list(itertools.product((0, 1), repeat=d)), dtype=torch.float64)
            values = (lo + corners * (hi - lo)) @ w + b
            assert torch.isclose(low[i], values.min()) and torch.isclose(high[i], values.max())
            assert torch.isclose(f[i], x[i] @ w + b)
            assert torch.isclose(product[i], (f[i] * values).min())
            inside = lo + torch.rand(500, d, generator=gen, dtype=torch.float64) * (hi - lo)
            assert ((inside @ w + b) >= low[i] - 1e-12).all() and ((inside @ w + b) <= high[i] + 1e-12).all()


def random_problem(seed: int, n: int = 200, d: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    y = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    x[1], y[0], y[1] = x[0], 1.0, -1.0  # one image with both labels: the exact minima are then above 0
    w = torch.randn(d, generator=gen, dtype=torch.float64) * 0.5
    return x, y, w, torch.randn((), generator=gen, dtype=torch.float64) * 0.1


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("lam", [0.25, 1.0, 4.0])
def test_gap_is_non_negative_for_any_linear_model_with_the_exact_minima(seed, lam):
    """Theorem 3.1 holds for every f and distribution; on the test set's own distribution its minima are exact."""
    x, y, w, b = random_problem(seed)
    row = theorem31.risks(w, b, x, y, 0.1, lam)
    exact = theorem31.empirical_bayes(x, y)
    assert exact == {"r_nat": 1 / len(y), "r_phi": 2 / len(y)}
    assert row["r_rob"] == pytest.approx(row["r_nat"] + row["r_bdy"])
    assert row["r_nat"] - exact["r_nat"] <= row["r_phi"] - exact["r_phi"] + 1e-12  # psi^-1 step (hinge: psi = id)
    assert row["r_bdy"] <= row["boundary_term"] + 1e-12
    assert theorem31.gap(row, exact)["gap"] >= -1e-12


def test_training_lowers_the_trades_objective():
    x, y, _, _ = random_problem(1)
    zero = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    w, b = theorem31.train_linear(x, y, 0.05, 1.0, epochs=5, lr=0.05, batch_size=32, seed=0)
    objective = theorem31.trades_hinge_objective
    assert objective(w, b, x, y, 0.05, 1.0) < objective(*zero, x, y, 0.05, 1.0)


def test_cli_writes_the_table_with_every_field(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "t31"
    assert theorem31.main(["--data", str(fmnist_dir), "--lambdas", "1", "4", "--epochs", "3",
                           "--output", str(out), "--no-progress"]) == 0
    result = json.loads((out / "theorem31.json").read_text())
    assert result["classes"] == {"-1": "Trouser", "+1": "Bag"} and result["test_images"] > 0
    assert [r["lambda"] for r in result["rows"]] == [1.0, 4.0]
    for r in result["rows"]:
        assert {"r_nat", "r_bdy", "r_rob", "r_phi", "boundary_term", "delta_lhs", "delta_rhs", "gap"} <= set(r)
        assert r["r_rob"] == pytest.approx(r["r_nat"] + r["r_bdy"])
        assert r["gap"] == pytest.approx(r["delta_rhs"] - r["delta_lhs"])
        assert r["exact"]["gap"] >= 0
    assert {"r_nat", "r_bdy", "r_rob"} <= set(result["natural"])
    text = (out / "theorem31.md").read_text()
    assert "| lambda | R_nat | R_bdy | R_rob | Delta_RHS - Delta_LHS |" in text and "| 4 |" in text
    assert "Delta_RHS - Delta_LHS" in capsys.readouterr().out


def test_cli_rejects_bad_classes_and_missing_data(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        theorem31.main(["--classes", "3", "3", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert theorem31.main(["--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
