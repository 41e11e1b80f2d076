import torch

from ops.matching.heads import JointModel, ProjectionHead, project


def test_a_head_gives_unit_rows_and_rebuilds_from_its_state():
    head = ProjectionHead(64, 16, 32)
    x = torch.randn(5, 64)
    z = project(head, x)
    assert z.shape == (5, 16) and torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    again = ProjectionHead.from_state(head.state_dict())
    assert torch.allclose(project(again, x), z)


def test_a_joint_model_rebuilds_from_its_state_with_both_heads():
    model = JointModel(128, 256, out_dim=32, hidden=64)
    faces, voices = torch.randn(3, 128), torch.randn(4, 256)
    again = JointModel.from_state(model.state_dict())
    assert torch.allclose(project(again.face, faces), project(model.face, faces))
    assert torch.allclose(project(again.voice, voices), project(model.voice, voices))
    assert project(again.voice, voices).shape == (4, 32)
