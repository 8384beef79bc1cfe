"""Generated sets with known truth for the quality harness: niche taste and a Sybil attack."""

import numpy as np
import pandas as pd
from scipy import stats

from ml.sybil import sybil_attack
from ml.synthetic import SyntheticParams, generate


def params(**changes: object) -> SyntheticParams:
    values: dict[str, object] = {"n_users": 50, "n_videos": 200, "n_comparisons": 5000, "seed": 5}
    values.update(changes)
    return SyntheticParams.model_validate(values)


def test_without_niche_users_the_set_is_unchanged() -> None:
    plain = generate(params())
    explicit = generate(params(fraction_niche=0.0))
    pd.testing.assert_frame_equal(plain.comparisons, explicit.comparisons)
    assert plain.niche_users == [] and plain.truth_niche is None


def test_niche_users_follow_one_independent_taste() -> None:
    data = generate(params(fraction_niche=0.1, fraction_adversarial=0.1))
    assert len(data.niche_users) == 5
    assert not set(data.niche_users) & set(data.adversarial_users)
    assert data.truth_niche is not None
    niche = data.truth_niche.set_index("video")["true_score"]
    truth = data.truth_global.set_index("video")["true_score"]
    # The niche taste is a second truth, unrelated to the global one.
    assert abs(stats.spearmanr(niche, truth.reindex(niche.index)).statistic) < 0.2
    personal = data.truth_individual
    own = personal[personal.public_username.isin(data.niche_users)]
    ordinary = personal[~personal.public_username.isin(data.niche_users + data.adversarial_users)]
    for rows, expected in ((own, niche), (ordinary, truth)):
        deviation = rows.true_score.to_numpy() - expected.reindex(rows.video).to_numpy()
        assert np.std(deviation) < 0.4  # only the personal noise (0.3) is left


def test_sybil_attack_promotes_a_video_with_few_honest_contributors() -> None:
    data = generate(params())
    attack = sybil_attack(data, n_fake=4, comparisons_per_fake=30, honest_contributors=5)
    frame = attack.comparisons
    fake = frame[frame.public_username.isin(attack.fake_users)]
    assert len(fake) == 4 * 30 and len(frame) == len(data.comparisons) + 120
    assert attack.honest_contributors == 5
    honest = frame[~frame.public_username.isin(attack.fake_users)]
    raters = honest[(honest.video_a == attack.target) | (honest.video_b == attack.target)]
    assert raters.public_username.nunique() == 5
    # Every fake comparison involves the target and prefers it as strongly as possible.
    target_on_b = fake.video_b == attack.target
    assert ((fake.video_a == attack.target) | target_on_b).all()
    assert (np.where(target_on_b, fake.score, -fake.score) == data.params.score_max).all()
    assert not fake.duplicated(["public_username", "video_a", "video_b"]).any()
