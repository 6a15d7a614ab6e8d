import torch

from mpqlab.exercises.nb06 import (
    check_grad_scale, check_lsq_step_grad, check_pact_forward, lsq_step_grad_solution, pact_forward_solution,
)
from mpqlab.quant.lsq import lsq_quantize
from mpqlab.quant.pact import pact_quantize


def test_reference_solutions_pass(capsys):
    for check in (check_grad_scale, check_lsq_step_grad, check_pact_forward):
        assert check(check.solution) is True
    assert capsys.readouterr().out.count("PASS") == 3


def test_wrong_answers_and_stubs_fail(capsys):
    assert check_grad_scale(lambda n, q_max: 1.0 / (n * q_max)) is False
    assert check_lsq_step_grad(lambda v, s, q_min, q_max: (v / s).round() - v / s) is False  # ignores clipping
    assert check_pact_forward(lambda x, alpha, bits: x.clamp(0, alpha)) is False

    def stub(*args):
        raise NotImplementedError

    assert check_grad_scale(stub) is False
    out = capsys.readouterr().out
    assert out.count("FAIL") == 4 and "NotImplementedError" in out


def test_solutions_agree_with_the_package():
    v = torch.linspace(-3, 3, 61)
    s = torch.tensor(0.4, requires_grad=True)
    lsq_quantize(v, s, -4, 3).sum().backward()
    assert torch.isclose(s.grad, lsq_step_grad_solution(v, 0.4, -4, 3).sum(), atol=1e-4)
    assert torch.allclose(pact_forward_solution(v, 2.0, 3), pact_quantize(v, torch.tensor(2.0), 3), atol=1e-6)


def test_in_place_answers_are_judged_on_pristine_inputs():
    def step_grad_in_place(v, s, q_min, q_max):  # right: divides v in place
        r = v.div_(s)
        return torch.where(r <= q_min, float(q_min), torch.where(r >= q_max, float(q_max), r.round() - r))

    assert check_lsq_step_grad(step_grad_in_place)  # used to FAIL
    assert check_pact_forward(lambda x, alpha, bits: x.clamp_(0, alpha).mul_((2**bits - 1) / alpha).round_()
                              .mul_(alpha / (2**bits - 1)))
    assert not check_pact_forward(lambda x, alpha, bits: x.zero_())  # wrong: used to PASS
