"""The training recipe a plan carries (precision, memory format, learning-rate schedule, a moving
average of the weights): its values by hand, which setting wins, and that training still learns."""
import dataclasses
import json

import pytest
import torch

from nndose.errors import NndoseError
from nndose.plans import TrainingRecipe, load_plans, parse_plans
from nndose.training.trainer import TrainerSettings, nndoseTrainer
from nndose.training.trainer_variants import nndoseTrainer_CPU

PLANS = "nndose_preprocessed/Dataset042_Tiny/nndosePlans.json"


def _trainer(root, recipe: TrainingRecipe = TrainingRecipe(), cls=nndoseTrainer, epochs=10, initialize=True):
    plans = dataclasses.replace(load_plans(root / PLANS), training=recipe)
    t = cls(plans, "3d_fullres", "all", root / "nndose_preprocessed/Dataset042_Tiny", root / "nndose_results/r/fold_all",
            torch.device("cpu"), TrainerSettings(epochs=epochs, iterations_per_epoch=2))
    if initialize:
        t.initialize()
    return t


def test_learning_rate_schedules_by_hand(env):
    poly = _trainer(env, TrainingRecipe(initial_lr=1e-3, warmup_epochs=2), initialize=False)
    # warm-up: (epoch + 1) / (warmup + 1) of the peak; then t = (epoch - 2) / 8
    assert [poly.lr_at(e) for e in (0, 1, 2)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert poly.lr_at(6) == pytest.approx(1e-3 * 0.5 ** 0.9)
    cosine = _trainer(env, TrainingRecipe(initial_lr=1e-3, warmup_epochs=2, lr_schedule="cosine"), initialize=False)
    assert cosine.lr_at(6) == pytest.approx(0.5e-3) and cosine.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    default = _trainer(env, initialize=False)   # no recipe: the trainer's poly decay from 1e-3, no warm-up
    assert default.lr_at(0) == 1e-3 and default.lr_at(5) == pytest.approx(1e-3 * 0.5 ** 0.9)


def test_a_variant_keeps_what_it_sets_and_takes_the_plan_for_the_rest(env):
    recipe = TrainingRecipe(initial_lr=5e-3, ema_decay=0.9)
    assert _trainer(env, recipe, initialize=False).initial_lr == 5e-3
    cpu = _trainer(env, recipe, cls=nndoseTrainer_CPU, initialize=False)
    assert cpu.initial_lr == 3e-3 and cpu.weight_ema_decay == 0.9


def test_the_moving_average_of_the_weights_by_hand_and_in_checkpoints(env, tmp_path):
    t = _trainer(env, TrainingRecipe(ema_decay=0.75))
    start = {k: v.clone() for k, v in t.network.state_dict().items()}
    image, target, _ = next(iter(t._loader(t.train_cases, None, seed=3)))
    t.train_step(image, target)
    after_one = {k: v.clone() for k, v in t.network.state_dict().items()}
    t.train_step(image, target)
    for k, v in t.averaged.state_dict().items():   # a1 = .75 w0 + .25 w1; a2 = .75 a1 + .25 w2
        expected = 0.75 * (0.75 * start[k] + 0.25 * after_one[k]) + 0.25 * t.network.state_dict()[k]
        assert torch.allclose(v, expected, atol=1e-6), k
    state = t.state()
    assert all(torch.equal(state["network"][k], v) for k, v in t.averaged.state_dict().items())
    assert all(torch.equal(state["network_train"][k], v) for k, v in t.network.state_dict().items())
    torch.save(state, tmp_path / "ck.pth")
    resumed = _trainer(env, TrainingRecipe(ema_decay=0.75))
    resumed.load(tmp_path / "ck.pth")
    for a, b in ((resumed.network, t.network), (resumed.averaged, t.averaged)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bfloat16_and_channels_last_train(env):
    t = _trainer(env, TrainingRecipe(amp_dtype="bfloat16", channels_last=True))
    t.amp = True                   # CPU autocast runs bfloat16 too: the CUDA path without a GPU
    image, target, _ = next(iter(t._loader(t.train_cases, None, seed=3)))
    first = t.train_step(image, target)
    for _ in range(25):
        last = t.train_step(image, target)
    assert t.scaler is None and last < 0.6 * first            # bfloat16 needs no loss scaling
    assert t.network.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    plain = _trainer(env)
    torch.manual_seed(0)
    a = plain.network(image)
    channels_last = _trainer(env, TrainingRecipe(channels_last=True))
    channels_last.network.load_state_dict(plain.network.state_dict())
    b = channels_last.network(channels_last._input(image))
    assert torch.allclose(a, b, atol=1e-5)                     # the memory format changes no number


def test_the_plan_carries_the_recipe_and_refuses_a_bad_one(env):
    d = json.loads((env / PLANS).read_text())
    d["training"] = {"amp_dtype": "bfloat16", "warmup_epochs": 5, "ema_decay": 0.999}
    plans = parse_plans(d, "plans")
    assert plans.training == TrainingRecipe(amp_dtype="bfloat16", warmup_epochs=5, ema_decay=0.999)
    assert parse_plans(json.loads(json.dumps(plans.to_json())), "again").training == plans.training
    for bad, needle in (({"amp_dtype": "int8"}, "amp_dtype must be one of"), ({"ema_decay": 1.0}, "ema_decay must lie in"),
                        ({"momentum": 0.9}, "unknown setting 'momentum'"), ({"warmup_epochs": "5"}, "wrong type")):
        d["training"] = bad
        with pytest.raises(NndoseError, match=needle):
            parse_plans(d, "plans")
