"""Migrate Antenna's database and create the data a load test needs (run inside the checkout's venv).

Usage, in the checkout folder with Antenna's environment (DJANGO_SETTINGS_MODULE, DATABASE_URL,
REDIS_URL):

    python antenna_fixture.py migrate
    python antenna_fixture.py data IMAGES TOKEN_FILE      # prints the job id

`migrate` is Antenna's `manage.py migrate` without one post_migrate receiver,
ami.tests.fixtures.signals.initialize_demo_project: it seeds a demo project with images uploaded to
MinIO (S3), which this set-up does not run; the load test needs none of that data. Antenna's other
receivers (roles and permissions) run as usual.

`data` creates a superuser and its API
token (written to TOKEN_FILE, mode 0600, never printed), a project, a deployment with IMAGES
source images in a collection, a pipeline, and a STARTED async_api ML job over those images, with
the job's Redis progress state set up as Antenna's own tests do (AsyncJobStateManager).
"""

import datetime
import os
import sys

import django

sys.path.insert(0, os.getcwd())
django.setup()

from ami.jobs.models import Job, JobDispatchMode, JobState, MLJob  # noqa: E402
from ami.main.models import Deployment, Project, SourceImage, SourceImageCollection  # noqa: E402
from ami.ml.models import Pipeline  # noqa: E402
from ami.ml.orchestration.async_job_state import AsyncJobStateManager  # noqa: E402
from ami.users.models import User  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402


def migrate() -> None:
    from ami.tests.fixtures.signals import initialize_demo_project
    from django.apps import apps
    from django.core.management import call_command
    from django.db.models.signals import post_migrate

    post_migrate.disconnect(initialize_demo_project, sender=apps.get_app_config("main"))
    call_command("migrate", interactive=False)


if sys.argv[1] == "migrate":
    migrate()
    sys.exit(0)

images, token_file = int(sys.argv[2]), sys.argv[3]
user = User.objects.create_superuser(email="load@example.org", password=None)
token, _ = Token.objects.get_or_create(user=user)
fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as out:
    out.write(token.key)

project = Project.objects.create(name="Load test", owner=user)
deployment = Deployment.objects.create(project=project, name="Load test deployment")
start = datetime.datetime(2026, 1, 1, 22, 0)
captures = [
    SourceImage.objects.create(deployment=deployment, path=f"load/{i:05d}.jpg",
                               timestamp=start + datetime.timedelta(minutes=i))
    for i in range(images)
]
collection = SourceImageCollection.objects.create(project=project, name="Load test images")
collection.images.set(captures)
pipeline = Pipeline.objects.create(name="Load test pipeline", slug="load-test-pipeline")
pipeline.projects.add(project)
job = Job.objects.create(
    job_type_key=MLJob.key, project=project, name="Load test job", pipeline=pipeline,
    source_image_collection=collection, dispatch_mode=JobDispatchMode.ASYNC_API,
)
job.update_status(JobState.STARTED, save=True)
AsyncJobStateManager(job.pk).initialize_job([str(c.pk) for c in captures])
print(job.pk)
