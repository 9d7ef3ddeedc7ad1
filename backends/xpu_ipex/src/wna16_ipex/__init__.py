"""wna16 backends for Intel hardware.

- ``ipex`` (:class:`~wna16_ipex.ipex.IpexBackend`): intel-extension-for-pytorch's weight-only linear, on XPU and CPU.
- ``xpu-native`` (:class:`~wna16_ipex.native.XpuNativeBackend`): torch's XPU int4 op, when IPEX is absent.

Both share :mod:`~wna16_ipex.layout` (regrouping act order and odd group sizes into plain groups). Importing this
package never imports IPEX; the backends do it lazily when asked whether they are available or to prepare a layer.
"""

from wna16_ipex.ipex import IpexBackend
from wna16_ipex.native import XpuNativeBackend

__all__ = ["IpexBackend", "XpuNativeBackend"]
