"""A training job's CloudWatch log lines, as they arrive, when the logs can be reached."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

log = logging.getLogger("curation.train")
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# Errors that asking again will not cure: the caller may not read the logs, or its credentials are bad.
DENIED = ("AccessDenied", "UnrecognizedClient", "ExpiredToken", "InvalidClientTokenId", "InvalidSignature")
UNREACHABLE = (
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    NoRegionError,
)


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
        """Every line written since the last call, each stream read to its end. A passing error
        (a throttle botocore's retries did not outlast) skips this poll; the next one resumes where
        this one stopped. Access and credential errors end the following: the status goes on alone."""
        if not self.reachable:
            return []
        lines: list[str] = []
        try:
            client = self._logs()
            streams = client.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/")
            for stream in streams.get("logStreams", []):
                self._read_to_end(client, stream["logStreamName"], lines)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code.startswith(DENIED):
                self._give_up(error)
            elif code != "ResourceNotFoundException":  # not found: the job has not written logs yet
                log.debug("training logs: %s; asking again at the next poll", code or error)
        except UNREACHABLE as error:
            self._give_up(error)
        except BotoCoreError as error:  # a read timeout, a dropped connection
            log.debug("training logs: %s; asking again at the next poll", error)
        return lines  # what was read before an error is shown; its tokens are kept

    def _read_to_end(self, client: Any, name: str, lines: list[str]) -> None:
        """Add stream ``name``'s lines to ``lines`` page by page (so that those read before an error
        are kept, as is the token after them): CloudWatch gives back the same forward token at the end."""
        while True:
            args = {"logGroupName": LOG_GROUP, "logStreamName": name, "startFromHead": True}
            if self._tokens.get(name):
                args["nextToken"] = self._tokens[name]
            answer = client.get_log_events(**args)
            lines += [event["message"] for event in answer.get("events", [])]
            token = answer.get("nextForwardToken")
            if not token or token == self._tokens.get(name):
                return
            self._tokens[name] = token

    def _give_up(self, error: Exception) -> None:
        log.info("training logs not reachable (%s); following the status only", type(error).__name__)
        self.reachable = False
