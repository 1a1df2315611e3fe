"""template.yaml's wiring of the AWS entry points (triggers.py), checked as data: who may send to the requests
queue, what each function may do, and timeouts that agree with each other."""

from .cfn import Stack, actions, statements, template

RULES = ("JobRequestedRule", "ManifestRule")


def props(name: str) -> dict:
    return template()["Resources"][name]["Properties"]


def test_the_requests_function_submits_and_never_calls_an_upstream():
    # (With a CatalogSource it reads that one object or parameter, as every function that validates does.)
    allowed = actions("RequestsFunction", Stack())
    assert not {a for a in allowed if a.split(":")[0] in ("bedrock", "secretsmanager", "ssm", "kms")}
    writes = [s["Resource"] for s in statements("RequestsFunction") if "s3:PutObject" in s["Action"]]
    assert writes == [
        {"Fn::Sub": "${OutputsBucket.Arn}/inputs/*"},  # a job's inputs (JobsSubmitPolicy)
        {"Fn::Sub": "${OutputsBucket.Arn}/results/*"},  # a manifest's results (JobNotificationsPolicy)
    ]


def test_the_invoke_function_runs_jobs_as_the_worker_does_within_the_workers_timeout():
    invoke = template()["Resources"]["InvokeFunction"]["Properties"]
    assert invoke["Timeout"] == {"Ref": "WorkerTimeout"}
    assert actions("InvokeFunction", Stack()) >= actions("WorkerFunction", Stack())


def test_only_the_two_rules_send_to_the_requests_queue_on_eventbridges_behalf():
    [allow] = [
        s for s in props("RequestsQueuePolicy")["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"
    ]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == [{"Fn::GetAtt": [r, "Arn"]} for r in RULES]
    for rule in RULES:
        [target] = props(rule)["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["RequestsQueue", "Arn"]}


def test_the_requests_queue_outlasts_its_function_and_ends_in_a_dead_letter_queue_with_an_alarm():
    queue = props("RequestsQueue")
    function = props("RequestsFunction")
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]  # AWS's advice for SQS event sources
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["RequestsDeadLetterQueue", "Arn"]}
    assert function["Events"]["Requests"]["Properties"]["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]
    alarm = props("RequestsDeadLetterAlarm")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["RequestsDeadLetterQueue", "QueueName"]}}
    ]


def test_callers_may_only_put_job_requested_events_and_write_requests_and_inputs():
    statement = {s["Sid"]: s for s in props("JobRequestersPolicy")["PolicyDocument"]["Statement"]}
    assert statement["PutJobRequestedEvents"]["Condition"] == {
        "StringEquals": {"events:detail-type": "Image Job Requested"}
    }
    assert statement["WriteManifestsAndInputs"]["Resource"] == [
        {"Fn::Sub": "${OutputsBucket.Arn}/requests/*"},
        {"Fn::Sub": "${OutputsBucket.Arn}/inputs/*"},
    ]
    assert statement["InvokeJobs"]["Resource"] == {"Ref": "InvokeFunction.Alias"}


def test_manifests_arrive_through_eventbridge_and_only_json_under_requests():
    assert props("OutputsBucket")["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    pattern = props("ManifestRule")["EventPattern"]
    assert pattern["detail"]["object"]["key"] == [{"wildcard": "requests/*.json"}]
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "OutputsBucket"}]
