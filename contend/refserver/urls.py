"""Routes of Antenna's API that contend drives; the trailing slash is optional (ADC omits it on the list)."""

from __future__ import annotations

from django.urls import re_path

from contend.refserver import views

urlpatterns = [
    re_path(r"^api/v2/jobs/?$", views.job_list),
    re_path(r"^api/v2/jobs/(?P<pk>\d+)/?$", views.job_detail),
    re_path(r"^api/v2/jobs/(?P<pk>\d+)/tasks/?$", views.job_tasks),
    re_path(r"^api/v2/jobs/(?P<pk>\d+)/result/?$", views.job_result),
    re_path(r"^api/v2/projects/?$", views.project_list),
    re_path(r"^api/v2/projects/(?P<pk>\d+)/pipelines/?$", views.project_pipelines),
]
