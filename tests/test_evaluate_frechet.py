"""The Fréchet distance against closed forms in several dimensions, including non-commuting
covariances, with negative controls: wrong trace terms that the 1-D and diagonal cases
cannot tell from the right one must fail here."""
import numpy as np
import pytest
from scipy.linalg import sqrtm

from meanflow_common.evaluate import frechet_distance, frechet_from_stats


def _rot(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _psd_root(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(w)) @ v.T


# Wrong variants of Tr((S1 S2)^(1/2)), each a plausible slip.
def _wrong_product_of_roots(s1, s2):  # Tr(S1^(1/2) S2^(1/2)): right only when S1, S2 commute
    return np.trace(_psd_root(s1) @ _psd_root(s2))


def _wrong_elementwise(s1, s2):  # sum sqrt(diag(S1 * S2 elementwise)): right for diagonal ones
    return np.sqrt(np.diag(s1) * np.diag(s2)).sum()


def _wrong_no_root(s1, s2):  # Tr(S1 S2)
    return np.trace(s1 @ s2)


def _fd_with(tr_root, mu1, s1, mu2, s2):
    d = np.asarray(mu1) - np.asarray(mu2)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_root(s1, s2))


def _two_by_two_closed_form(mu1, s1, mu2, s2):
    """For 2 x 2 SPD matrices, M = S1^(1/2) S2 S1^(1/2) has tr M = Tr(S1 S2) and
    det M = det S1 det S2, and Tr(M^(1/2)) = sqrt(tr M + 2 sqrt(det M))."""
    d = np.asarray(mu1) - np.asarray(mu2)
    root = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * root)


def test_diagonal_covariances_several_dimensions():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # Here the slips that keep the square root agree with the right answer: this case cannot catch them.
    for wrong in (_wrong_product_of_roots, _wrong_elementwise):
        assert _fd_with(wrong, mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    assert _fd_with(_wrong_no_root, mu1, np.diag(a), mu2, np.diag(b)) != pytest.approx(want, rel=1e-3)


def test_non_commuting_pair_exact_value():
    s1 = np.diag([4.0, 1.0])
    s2 = _rot(np.pi / 4) @ np.diag([9.0, 1.0]) @ _rot(np.pi / 4).T  # [[5, 4], [4, 5]]
    np.testing.assert_allclose(s2, [[5, 4], [4, 5]], atol=1e-12)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    # Tr(S1 S2) = 25, det S1 det S2 = 36: Tr((S1 S2)^(1/2)) = sqrt(25 + 12); FD = 5 + 10 - 2 sqrt(37)
    want = 15 - 2 * np.sqrt(37)
    mu = np.zeros(2)
    assert frechet_from_stats(mu, s1, mu, s2) == pytest.approx(want, rel=1e-12)
    assert _two_by_two_closed_form(mu, s1, mu, s2) == pytest.approx(want, rel=1e-12)
    assert frechet_from_stats(mu, s2, mu, s1) == pytest.approx(want, rel=1e-12)  # symmetric
    # Negative controls: every wrong trace term misses it (Tr(S1^(1/2) S2^(1/2)) = 6 gives 3).
    assert _fd_with(_wrong_product_of_roots, mu, s1, mu, s2) == pytest.approx(3.0)
    for wrong in (_wrong_product_of_roots, _wrong_elementwise, _wrong_no_root):
        assert abs(_fd_with(wrong, mu, s1, mu, s2) - want) > 0.1, wrong.__name__


def test_block_non_commuting_pairs_rotated_in_six_dimensions():
    """Three non-commuting 2 x 2 pairs on the diagonal blocks, all turned by one random
    orthogonal Q (FD is invariant under x -> Q x): a dense 6-D case with a closed form."""
    rng = np.random.default_rng(1)
    s1, s2 = np.zeros((6, 6)), np.zeros((6, 6))
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    want = ((mu1 - mu2) ** 2).sum()
    for k in range(3):
        a = _rot(rng.uniform(0, np.pi)) @ np.diag(rng.uniform(0.2, 5, 2)) @ _rot(rng.uniform(0, np.pi)).T
        a = a @ a.T
        b = _rot(rng.uniform(0, np.pi)) @ np.diag(rng.uniform(0.2, 5, 2)) @ _rot(rng.uniform(0, np.pi)).T
        b = b @ b.T
        s1[2 * k:2 * k + 2, 2 * k:2 * k + 2], s2[2 * k:2 * k + 2, 2 * k:2 * k + 2] = a, b
        want += _two_by_two_closed_form(np.zeros(2), a, np.zeros(2), b)
    q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    s1, s2, mu1, mu2 = q @ s1 @ q.T, q @ s2 @ q.T, q @ mu1, q @ mu2
    assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)
    for wrong in (_wrong_product_of_roots, _wrong_elementwise, _wrong_no_root):
        assert abs(_fd_with(wrong, mu1, s1, mu2, s2) - want) > 1e-3 * want, wrong.__name__


def test_random_dense_covariances_against_scipy_sqrtm():
    """An independent route: scipy's sqrtm of the non-symmetric product S1 S2."""
    rng = np.random.default_rng(2)
    for d in (3, 8, 16):
        a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        want = _fd_with(lambda x, y: np.trace(sqrtm(x @ y)).real, mu1, s1, mu2, s2)
        assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)


def test_scaled_covariance_and_samples():
    # S2 = c^2 S1 (dense): Tr((S1 S2)^(1/2)) = c Tr S1, FD = (1 - c)^2 Tr S1.
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 5))
    s1 = a @ a.T + np.eye(5)
    assert frechet_from_stats(np.zeros(5), s1, np.zeros(5), 9.0 * s1) == pytest.approx(4 * np.trace(s1), rel=1e-10)
    # From samples: the FD of the fitted Gaussians (unbiased covariances), by scipy's route.
    x = rng.standard_normal((400, 5)) @ a.T
    y = 3.0 * rng.standard_normal((300, 5)) @ a.T + 1.0
    want = _fd_with(lambda p, q: np.trace(sqrtm(p @ q)).real, x.mean(0), np.cov(x, rowvar=False),
                    y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-12)
