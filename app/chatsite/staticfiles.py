"""The static files storage of a deployment: hashed names, JavaScript module imports included."""

from django.contrib.staticfiles.storage import ManifestStaticFilesStorage


class ModuleManifestStaticFilesStorage(ManifestStaticFilesStorage):
    """Django's hashed names, also written into `import ... from "./x.js";` (room.js imports session.js).

    nginx serves every file under /static/ as immutable for a year: an import left unhashed would keep a
    browser on the first session.js it fetched, and the kept releases' files share one directory.
    """

    support_js_module_import_aggregation = True
