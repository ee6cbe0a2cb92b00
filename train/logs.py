"""A training job's CloudWatch log lines, as they arrive, when the logs can be reached."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("curation.train")
LOG_GROUP = "/aws/sagemaker/TrainingJobs"


class JobLogs:
    """Remembers where it stopped in each of the job's streams; quiet when there are none (yet)."""

    def __init__(self, job_name: str, client: Any | None = None) -> None:
        self.job_name = job_name
        self._client = client
        self._tokens: dict[str, str | None] = {}
        self.reachable = True

    def _logs(self) -> Any:
        if self._client is None:
            import boto3

            from train.sagemaker import region

            self._client = boto3.client("logs", region_name=region())
        return self._client

    def new_lines(self) -> list[str]:
        if not self.reachable:
            return []
        try:
            client = self._logs()
            streams = client.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/")
            lines = []
            for stream in streams.get("logStreams", []):
                name = stream["logStreamName"]
                args = {"logGroupName": LOG_GROUP, "logStreamName": name, "startFromHead": True}
                if self._tokens.get(name):
                    args["nextToken"] = self._tokens[name]
                answer = client.get_log_events(**args)
                self._tokens[name] = answer.get("nextForwardToken")
                lines += [event["message"] for event in answer.get("events", [])]
            return lines
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return []  # the job has not written logs yet
            self._give_up(error)
        except BotoCoreError as error:
            self._give_up(error)
        return []

    def _give_up(self, error: Exception) -> None:
        log.info("training logs not reachable (%s); following the status only", type(error).__name__)
        self.reachable = False
