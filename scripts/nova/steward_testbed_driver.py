"""Nova's fake compute driver, with snapshots that carry data.

nova.virt.fake.FakeDriver (the driver the test bed runs Nova with: no
hypervisor here) only moves a snapshot's task state: the Glance image that
a createImage action made stays `queued`, without data, and nothing can boot
from it. A real driver (libvirt's `snapshot`) uploads the server's disk
through Nova's image API once the image record exists. This driver does the
same with the disk a FakeDriver server has — the image it was booted from,
unchanged — so a snapshot goes `active` and servers boot from it, as on a
real cloud. Everything else is FakeDriver's.
"""

import os
import tempfile

from oslo_log import log as logging

from nova.image import glance
from nova.virt import fake

LOG = logging.getLogger(__name__)


class SnapshottingFakeDriver(fake.FakeDriver):
    """FakeDriver whose snapshots upload the server's (unchanged) disk."""

    def snapshot(self, context, instance, image_id, update_task_state):
        super().snapshot(context, instance, image_id, update_task_state)
        api = glance.API()
        base = api.get(context, instance.image_ref)
        metadata = {
            "disk_format": base.get("disk_format") or "raw",
            "container_format": base.get("container_format") or "bare",
        }
        with tempfile.TemporaryDirectory() as work:
            disk = os.path.join(work, "disk")
            api.download(context, instance.image_ref, dest_path=disk)
            LOG.info("snapshot %s of instance %s: uploading %d bytes",
                     image_id, instance.uuid, os.path.getsize(disk))
            with open(disk, "rb") as data:
                api.update(context, image_id, metadata, data, purge_props=False)
