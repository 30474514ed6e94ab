"""Background tasks of the example product: `apiphant-background myproduct` runs them."""

import logging

from apiphant.background import seconds

log = logging.getLogger(__name__)


@seconds(60)
def heartbeat():
    """A task every minute, so a deploy shows the background program working."""
    log.info('myproduct is alive')
