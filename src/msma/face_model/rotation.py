"""Euler angles -> rotation matrices with Deep3DFaceRecon's convention.

``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` applied to column vectors, ``v' = R v + t`` (Deep3DFaceRecon_pytorch
``models/bfm.py``: ``compute_rotation`` builds the same three matrices and returns ``R^T`` for its row-vector
``pts @ rot`` product). In the model frame (x right, y up, z towards the camera):

* pitch (about x) > 0 turns the face downwards (the nose tip moves to -y: ``y' = cos y - sin z``),
* yaw (about y) > 0 turns the face towards the viewer's right (the nose tip moves to +x),
* roll (about z) > 0 rotates the image of the face counter-clockwise as seen by the camera.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_angles(angles: Tensor) -> None:
    if angles.ndim != 2 or angles.shape[1] != 3:
        raise ValueError(f"angles must be (B, 3) (pitch, yaw, roll) in radians, got {tuple(angles.shape)}")


def rotation_x(pitch: Tensor) -> Tensor:
    """(B,) angles in radians -> (B, 3, 3) rotation about +x: ``[[1,0,0],[0,c,-s],[0,s,c]]``."""
    c, s = torch.cos(pitch), torch.sin(pitch)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=-1).reshape(-1, 3, 3)


def rotation_y(yaw: Tensor) -> Tensor:
    """(B,) angles in radians -> (B, 3, 3) rotation about +y: ``[[c,0,s],[0,1,0],[-s,0,c]]``."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], dim=-1).reshape(-1, 3, 3)


def rotation_z(roll: Tensor) -> Tensor:
    """(B,) angles in radians -> (B, 3, 3) rotation about +z: ``[[c,-s,0],[s,c,0],[0,0,1]]``."""
    c, s = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(-1, 3, 3)


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Deep3D's rotation from Euler angles.

    Args:
        angles: (B, 3) pitch, yaw, roll in radians.

    Returns:
        (B, 3, 3) ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``, to be applied as ``v' = R @ v``.
    """
    _check_angles(angles)
    return rotation_z(angles[:, 2]) @ rotation_y(angles[:, 1]) @ rotation_x(angles[:, 0])


def matrix_to_euler(rotation: Tensor) -> Tensor:
    """Inverse of :func:`euler_to_matrix` for yaw in (-pi/2, pi/2).

    Args:
        rotation: (B, 3, 3) rotation matrices ``Rz @ Ry @ Rx``.

    Returns:
        (B, 3) pitch, yaw, roll in radians.
    """
    if rotation.ndim != 3 or rotation.shape[1:] != (3, 3):
        raise ValueError(f"rotation must be (B, 3, 3), got {tuple(rotation.shape)}")
    # R[2,0] = -sin(yaw); R[2,1] = cos(yaw) sin(pitch); R[2,2] = cos(yaw) cos(pitch);
    # R[1,0] = sin(roll) cos(yaw); R[0,0] = cos(roll) cos(yaw).
    yaw = torch.asin((-rotation[:, 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    roll = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return torch.stack([pitch, yaw, roll], dim=-1)


def rotate(points: Tensor, rotation: Tensor) -> Tensor:
    """Applies ``v' = R v`` to a batch of row-vector points.

    Args:
        points: (B, N, 3).
        rotation: (B, 3, 3).

    Returns:
        (B, N, 3) rotated points (``points @ R^T``).
    """
    return points @ rotation.transpose(1, 2)
