"""Tests of diffnotes.sequences (Potts model, guided discrete diffusion) and diffnotes.molecules (torus diffusion)."""

import math

import numpy as np
import pytest
import torch

from diffnotes import discrete as D
from diffnotes import molecules as M
from diffnotes import sequences as Sq


# -- sequences ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    potts = Sq.PottsModel.random(3, "KEL", field_scale=1.0, coupling_scale=0.7, generator=3)
    process = D.FactorizedCTMC.uniform(3, 3, rate=1.0)
    mask = Sq.property_mask(Sq.letter_count(potts.states(), [0]), [2, 3])
    return potts, process, mask


def test_potts_law_sums_to_one_and_matches_log_prob(small):
    potts, process, _ = small
    p = potts.law()
    assert abs(float(p.sum()) - 1) < 1e-12
    assert torch.allclose(torch.log(p), potts.log_prob(potts.states()), atol=1e-12)
    assert torch.equal(potts.states(), process.data_states())
    assert torch.equal(potts.index(potts.states()), torch.arange(27))
    # log Z by brute force over the states
    brute = math.log(sum(math.exp(float(potts.unnormalized_log_prob(s[None]))) for s in potts.states()))
    assert abs(brute - potts.log_z) < 1e-12


def test_potts_energy_against_definition():
    potts = Sq.PottsModel.random(4, "ABCD", generator=0)
    x = potts.sample(5, 1)
    for row in x:
        e = sum(float(potts.fields[l, row[l]]) for l in range(4))
        e += sum(float(potts.couplings[l, m, row[l], row[m]]) for l in range(4) for m in range(l + 1, 4))
        assert abs(e - float(potts.unnormalized_log_prob(row[None]))) < 1e-12


def test_gibbs_matches_enumeration(small):
    potts, process, _ = small
    x = potts.gibbs(4000, 20, generator=5)
    assert D.chi_square_pvalue(x, potts.law(), process) > 1e-3
    # a wrong law is rejected: the Gibbs sample is not uniform
    assert D.chi_square_pvalue(x, torch.full((27,), 1 / 27, dtype=torch.float64), process) < 1e-6


def test_exact_sampling_and_rejection(small):
    potts, process, mask = small
    accept = lambda x: Sq.property_mask(Sq.letter_count(x, [0]), [2, 3])  # noqa: E731
    x, drawn = Sq.rejection_sample(potts.sample, accept, 3000, batch=1000, generator=2)
    assert x.shape == (3000, 3) and bool(accept(x).all())
    P = float(potts.law()[mask].sum())
    # drawn - n is negative binomial: mean n (1 - P) / P
    mean, sd = 3000 / P, math.sqrt(3000 * (1 - P)) / P
    assert abs(drawn - mean) < 5 * sd
    assert D.chi_square_pvalue(x, Sq.conditional_law(potts.law(), mask), process) > 1e-3


def test_exact_classifier_guidance_is_the_conditional_ratio(small):
    potts, process, mask = small
    p = potts.law()
    p_e = Sq.conditional_law(p, mask)
    guided = Sq.classifier_guided_ratios(D.ExactRatios(process, p), Sq.exact_log_classifier(process, p, mask))
    target = D.ExactRatios(process, p_e)
    states = process.states()
    for t in [0.02, 0.7, 4.0]:
        assert torch.allclose(guided(states, t), target(states, t), rtol=1e-10, atol=0)
    t_rows = torch.linspace(0.05, 3.0, states.shape[0], dtype=torch.float64)  # one time per row
    assert torch.allclose(guided(states, t_rows), target(states, t_rows), rtol=1e-10, atol=0)


def test_guided_reverse_reproduces_the_conditional_law(small):
    potts, process, mask = small
    p = potts.law()
    p_e = Sq.conditional_law(p, mask)
    guided = Sq.classifier_guided_ratios(D.ExactRatios(process, p), Sq.exact_log_classifier(process, p, mask))
    grid = D.time_grid(10.0, 1e-3, 400)
    start = torch.full((27,), 1 / 27, dtype=torch.float64)
    law = D.output_law("tweedie", guided, process, grid, start)
    assert D.tv(law, process.marginal(p_e, 1e-3)) < 5e-3
    # and a Monte Carlo run of the sampler agrees with it
    x = D.tweedie(guided, (4000, 3), D.time_grid(10.0, 1e-3, 100), process=process, generator=0)
    law100 = D.output_law("tweedie", guided, process, D.time_grid(10.0, 1e-3, 100), start)
    assert D.chi_square_pvalue(x, law100, process) > 1e-3
    assert float(Sq.property_mask(Sq.letter_count(x, [0]), [2, 3]).double().mean()) > 0.97


def test_strength_zero_is_unguided(small):
    potts, process, mask = small
    exact = D.ExactRatios(process, potts.law())
    g0 = Sq.classifier_guided_ratios(exact, Sq.exact_log_classifier(process, potts.law(), mask), 0.0)
    states = process.states()
    assert torch.allclose(g0(states, 0.3), exact(states, 0.3), rtol=1e-13)


def test_noisy_classifier_learns_towards_the_exact_one(small):
    from diffnotes.training import train

    potts, process, mask = small
    data = potts.sample(4000, 0)
    labels = Sq.property_mask(Sq.letter_count(data, [0]), [2, 3]).double()
    clf = Sq.NoisyPropertyClassifier(process, hidden=32, generator=0)
    exact = Sq.exact_log_classifier(process, potts.law(), mask)
    states = process.states()
    with torch.no_grad():
        before = float((clf.log_prob(states, 0.2).exp() - exact(states, 0.2).exp()).abs().mean())
    train(clf, lambda m, x, y, generator=None: Sq.property_classifier_loss(m, x, y, spacing="log",
                                                                            generator=generator),
          (data, labels), steps=300, batch_size=256, lr=3e-3, generator=1, progress=False)
    with torch.no_grad():
        after = float((clf.log_prob(states, 0.2).exp() - exact(states, 0.2).exp()).abs().mean())
    assert after < 0.5 * before and after < 0.1


def test_motif_and_letter_counts():
    x = torch.tensor([[0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])
    assert Sq.motif_count(x, [0, 1]).tolist() == [2, 0]
    assert Sq.motif_count(x, [1, 1]).tolist() == [0, 4]
    assert Sq.letter_count(x, [0]).tolist() == [3, 0]
    assert Sq.letter_count(x, [0, 1]).tolist() == [5, 5]


def test_encode_decode_round_trip():
    potts = Sq.PottsModel.random(4, "LKES", generator=0)
    x = potts.encode(["LKES", "KKKK"])
    assert x.tolist() == [[0, 1, 2, 3], [1, 1, 1, 1]]
    assert potts.decode(x) == ["LKES", "KKKK"]


def test_sequence_bad_inputs():
    potts = Sq.PottsModel.random(4, "LKES", generator=0)
    with pytest.raises(ValueError, match="outside the alphabet"):
        potts.encode("LKEX")
    with pytest.raises(ValueError, match="length"):
        potts.encode("LKE")
    with pytest.raises(ValueError, match="outside the alphabet"):
        potts.log_prob(torch.tensor([[0, 1, 2, 4]]))
    with pytest.raises(TypeError, match="integer"):
        potts.log_prob(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="empty"):
        Sq.property_mask(torch.tensor([1, 2]), [])
    with pytest.raises(ValueError, match="empty"):
        Sq.conditional_law(potts.law(), torch.zeros(256, dtype=torch.bool))
    with pytest.raises(ValueError, match="probability zero"):
        law = torch.zeros(256, dtype=torch.float64)
        law[0] = 1.0
        mask = torch.zeros(256, dtype=torch.bool)
        mask[1] = True
        Sq.conditional_law(law, mask)
    with pytest.raises(ValueError, match="distinct"):
        Sq.PottsModel.random(3, "LLK")
    with pytest.raises(ValueError, match="symmetric"):
        J = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
        J[0, 1, 0, 1] = 1.0
        Sq.PottsModel(torch.zeros(2, 2), J, "AB")
    with pytest.raises(ValueError, match="strength"):
        Sq.classifier_guided_ratios(lambda x, t: x, lambda x, t: x, -1.0)
    with pytest.raises(ValueError, match="motif"):
        Sq.motif_count(torch.zeros(2, 3, dtype=torch.long), [0, 0, 0, 0])
    process = D.FactorizedCTMC.uniform(4, 4)
    clf = Sq.NoisyPropertyClassifier(process, hidden=8, generator=0)
    with pytest.raises(ValueError, match="spacing"):
        Sq.property_classifier_loss(clf, torch.zeros(3, 4, dtype=torch.long), torch.zeros(3), spacing="cubic")


# -- torus ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.05, 0.5, 1.5, math.pi, 5.0])
def test_wrapped_normal_density_and_score(sigma):
    x = torch.linspace(-math.pi, math.pi, 4001, dtype=torch.float64)[:-1]
    dens = torch.exp(M.wrapped_normal_log_prob(x, sigma))
    assert abs(float(dens.sum()) * 2 * math.pi / 4000 - 1) < 1e-10
    # the Fourier (theta-function) form
    k = torch.arange(1, 200, dtype=torch.float64)
    fourier = (1 + 2 * (torch.exp(-0.5 * sigma**2 * k**2) * torch.cos(x[:, None] * k)).sum(1)) / (2 * math.pi)
    assert torch.allclose(dens, fourier, rtol=1e-10, atol=1e-14)
    xg = x[::50].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(M.wrapped_normal_log_prob(xg, sigma).sum(), xg)
    assert torch.allclose(M.wrapped_normal_score(x[::50], sigma), g, atol=1e-10)
    # periodic
    assert torch.allclose(M.wrapped_normal_score(x[::50] + 2 * math.pi, sigma), g, atol=1e-10)


def test_torus_grid_density_exact_diffused_law():
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(12, 12, generator=gen, dtype=torch.float64) ** 4
    ref = M.TorusGridDensity(w)
    q = -math.pi + 2 * math.pi * (torch.arange(120, dtype=torch.float64) + 0.5) / 120
    mesh = torch.cartesian_prod(q, q)
    for t in [0.0, 0.4, 1.0]:
        mass = float(torch.exp(ref.log_prob(mesh, t)).sum()) * (2 * math.pi / 120) ** 2
        assert abs(mass - 1) < 1e-6 if t == 0.0 else abs(mass - 1) < 1e-10
        x = (6 * torch.rand(40, 2, generator=gen, dtype=torch.float64) - 3).requires_grad_(True)
        (g,) = torch.autograd.grad(ref.log_prob(x, t).sum(), x)
        assert torch.allclose(ref.score(x.detach(), t), g, atol=1e-8)
    # with a tiny sigma_min the law at t = 0 is the piecewise-constant one: cell masses by quadrature
    sharp = M.TorusGridDensity(w, M.TorusVE(1e-5, math.pi))
    edges = torch.linspace(-math.pi, math.pi, 4, dtype=torch.float64)
    coarse = M.cell_populations(mesh, edges, weights=torch.exp(sharp.log_prob(mesh, 0.0)))
    direct = sharp.masses.reshape(3, 4, 3, 4).sum((1, 3))
    assert torch.allclose(coarse, direct, atol=1e-10)
    x = sharp.sample(20000, 0)
    assert D.tv(M.cell_populations(x, edges).reshape(-1), direct.reshape(-1)) < 0.02


def test_torus_sampler_with_exact_score_reproduces_a_wrapped_normal():
    sde = M.TorusVE()
    mu = torch.tensor([2.5, -1.0], dtype=torch.float64)
    s0 = 0.3

    def score(x, t):
        s = torch.sqrt(s0**2 + sde.sigma(t) ** 2)[:, None].expand_as(x)
        return M.wrapped_normal_score(x - mu, s)

    x = M.torus_sampler(score, (4000, 2), process=sde, n_steps=300, generator=0)
    rho = math.exp(-(s0**2 + sde.sigma_min**2) / 2)  # E cos(X - mu) of the wrapped normal
    c = torch.cos(x - mu).mean(0)
    sd = math.sqrt((1 + math.exp(-2 * (s0**2)) - 2 * rho**2) / 2 / 4000)
    assert torch.all((c - rho).abs() < 5 * sd + 0.01)
    assert torch.all(torch.sin(x - mu).mean(0).abs() < 0.03)


def test_torus_dsm_loss_is_minimised_by_the_exact_score():
    sde = M.TorusVE()
    gen = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.5], dtype=torch.float64)
    x0 = M.wrap(mu + 0.2 * torch.randn(20000, 1, generator=gen, dtype=torch.float64))

    def exact(x, t):
        return M.wrapped_normal_score(x - mu, torch.sqrt(0.04 + sde.sigma(t) ** 2)[:, None].expand_as(x))

    def scaled(c):
        return lambda x, t: c * exact(x, t)

    losses = [float(M.torus_dsm_loss(scaled(c), x0, process=sde, generator=7)) for c in [0.8, 1.0, 1.2]]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_cell_populations_and_bad_torus_inputs():
    x = torch.tensor([[0.1, 3.0], [-3.0, 0.2], [1.0, 1.0]], dtype=torch.float64)
    pop = M.cell_populations(x, torch.tensor([0, math.pi, 2 * math.pi], dtype=torch.float64))
    assert pop.tolist() == [[1 / 3, 1 / 3], [1 / 3, 0.0]] or abs(float(pop.sum()) - 1) < 1e-12
    assert abs(float(pop.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="one turn"):
        M.cell_populations(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="sigma"):
        M.wrapped_normal_score(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="finite"):
        M.wrapped_normal_log_prob(torch.tensor([float("nan")]), 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        M.TorusVE(1.0, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.TorusVE().sigma(1.5)
    with pytest.raises(ValueError, match="masses"):
        M.TorusGridDensity(-torch.ones(4, 4))
    net = M.TorusScoreMLP(2, M.TorusVE(), hidden=8, depth=1, generator=0)
    assert net(torch.zeros(5, 2), 0.5).shape == (5, 2)
    with pytest.raises(ValueError, match="angles"):
        net(torch.zeros(5, 3), 0.5)


# -- RDKit ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pentane():
    pytest.importorskip("rdkit")
    return M.TorsionalMolecule("CCCCC", n_conformers=20, n_relaxed=5, generator=0)


def test_pentane_torsions_and_energy(pentane):
    assert pentane.torsions == [(0, 1, 2, 3), (1, 2, 3, 4)]
    assert pentane.etkdg_torsions.shape == (20, 2)
    e0 = pentane.energy(pentane.reference_torsions[None])
    assert abs(float(e0)) < 1e-6  # the reference geometry is the minimum found
    deg = math.pi / 180
    u = pentane.energy(torch.tensor([[180 * deg, 180 * deg], [65 * deg, 180 * deg], [0.0, 180 * deg],
                                     [60 * deg, -60 * deg]], dtype=torch.float64))
    # anti-anti lowest, gauche (rigid rotation) 0.3-2.5 kcal/mol above, eclipsed and g+g- far above
    assert abs(float(u[0])) < 0.05 and 0.3 < float(u[1]) < 2.5 and float(u[2]) > 3 and float(u[3]) > 3
    # the geometry is restored after an energy evaluation
    assert abs(float(pentane.energy(pentane.reference_torsions[None]))) < 1e-6


def test_pentane_boltzmann_rejection_sampling(pentane):
    nodes, U = pentane.energy_grid(48)
    w = M.TorsionalMolecule.boltzmann_weights(U, 300.0)
    assert abs(float(w.sum()) - 1) < 1e-12
    edges = torch.tensor([0, 2 * math.pi / 3, 4 * math.pi / 3, 2 * math.pi], dtype=torch.float64)
    pi = M.cell_populations(torch.cartesian_prod(nodes, nodes), edges, weights=w.reshape(-1))
    x, acc = pentane.sample_boltzmann(3000, 300.0, n_grid=48, margin=0.5, generator=1)
    assert x.shape == (3000, 2) and 0 < acc <= 1
    q = M.cell_populations(x, edges)
    big = pi > 0.01
    stat = float(((q[big] - pi[big]) ** 2 / (pi[big] / 3000)).sum())
    assert stat < 25  # chi-square with 4 dof (5 big cells): p < 1e-4 beyond
    assert np.isclose(float(pi[1, 1]), 0.72, atol=0.03)


def test_molecule_bad_inputs():
    pytest.importorskip("rdkit")
    with pytest.raises(ValueError, match="SMILES"):
        M.TorsionalMolecule("C1CC", n_conformers=2)
    with pytest.raises(ValueError, match="rotatable"):
        M.TorsionalMolecule("CC", n_conformers=2)
    with pytest.raises(TypeError, match="string"):
        M.TorsionalMolecule(42)


def test_exact_ratios_table_path_matches_the_contraction():
    # diffnotes.discrete.ExactRatios reads one-time batches off the marginal law (the guided samplers rely on it)
    gen = torch.Generator().manual_seed(4)
    for process in [D.FactorizedCTMC.uniform(3, 4), D.FactorizedCTMC.absorbing(3, 4)]:
        p = torch.rand(3**4, generator=gen, dtype=torch.float64)
        p[::5] = 0
        p = p / p.sum()
        R = D.ExactRatios(process, p)
        x = process.states()[torch.randint(process.S**4, (200,), generator=gen)]
        t = torch.full((200,), 0.4, dtype=torch.float64)
        assert torch.allclose(R(x, 0.4), R._ratios(x, t), rtol=1e-12, atol=1e-300)
