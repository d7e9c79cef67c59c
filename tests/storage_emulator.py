"""`python tests/storage_emulator.py start --port=P --no-store-on-disk --default-bucket=B`: gcp-storage-emulator, with
the object generation in every download's `x-goog-generation` header, as Cloud Storage sends it.

Tensorstore (orbax's array store) reads an object's generation from that header; without it, reading back an
OCDBT manifest fails with 'Malformed StorageGeneration'. The emulator's own download handler omits it, so this
wraps the handler before the server builds its routing table from it.
"""

import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
  except NotFound:
    return
  response['x-goog-generation'] = obj['generation']
  response['x-goog-metageneration'] = obj.get('metageneration', '1')


objects.download = _download_with_generation

from gcp_storage_emulator import __main__ as emulator  # noqa: E402  (after the patch: it builds the routes)

if __name__ == '__main__':
  emulator.main(sys.argv[1:])
