# mode = "scaled": an Application Load Balancer in front of an Auto Scaling Group whose instances
# boot the same cloud-init as the single VM and scale on average CPU.

resource "aws_lb" "web" {
  #checkov:skip=CKV_AWS_150:Deletion protection would make `make destroy` fail; the load balancer holds no data and apply recreates it.
  #checkov:skip=CKV_AWS_91:Every instance's nginx logs each request with the client address (TRUSTED_PROXIES); ALB logs would need an S3 bucket and its policy.
  #checkov:skip=CKV2_AWS_28:WAF is billed per web ACL and rule; nginx and the app rate-limit (429). Attach one with aws_wafv2_web_acl_association if needed.
  #checkov:skip=CKV2_AWS_20:HTTP redirects to HTTPS whenever certificate_arn is set (aws_lb_listener.http); without a certificate there is no HTTPS to send it to.
  count = local.scaled ? 1 : 0

  name                       = "${var.name}-alb"
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [aws_security_group.alb[0].id]
  subnets                    = local.subnet_ids
  drop_invalid_header_fields = true
}

resource "aws_lb_target_group" "web" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the instances stays in the VPC and their security group admits only the load balancer.
  count = local.scaled ? 1 : 0

  name                 = "${var.name}-web"
  vpc_id               = data.aws_vpc.selected.id
  target_type          = "instance"
  port                 = 80
  protocol             = "HTTP"
  deregistration_delay = 30 # uWSGI finishes in-flight requests well within this

  health_check {
    path                = "/readyz" # 200 only once every model is loaded and warmed
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  count = local.scaled ? 1 : 0

  load_balancer_arn = aws_lb.web[0].arn
  port              = 80
  protocol          = "HTTP"

  # With a certificate, plain HTTP only redirects; without one it serves.
  default_action {
    type             = var.certificate_arn != null ? "redirect" : "forward"
    target_group_arn = var.certificate_arn != null ? null : aws_lb_target_group.web[0].arn

    dynamic "redirect" {
      for_each = var.certificate_arn != null ? [443] : []
      content {
        port        = redirect.value
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.scaled && var.certificate_arn != null ? 1 : 0

  load_balancer_arn = aws_lb.web[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06" # TLS 1.2 and 1.3 only
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web[0].arn
  }
}

resource "aws_launch_template" "web" {
  count = local.scaled ? 1 : 0

  name_prefix            = "${var.name}-"
  description            = "modelstack VM"
  image_id               = data.aws_ami.selected.id
  instance_type          = var.instance_type
  key_name               = var.ssh_key_name
  vpc_security_group_ids = [aws_security_group.instance.id]
  user_data              = base64encode(local.user_data)
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = data.aws_ami.selected.root_device_name

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true # one-minute metrics, so target tracking reacts in minutes rather than five
  }

  # default_tags do not reach what the Auto Scaling Group launches (instances get the group's tags).
  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = var.name })
  }

  lifecycle {
    # As in single mode, a new image release rolls the group only when asked (-replace).
    ignore_changes = [image_id]
  }
}

resource "aws_autoscaling_group" "web" {
  count = local.scaled ? 1 : 0

  name_prefix               = "${var.name}-"
  vpc_zone_identifier       = local.subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = coalesce(var.desired_capacity, var.min_size)
  target_group_arns         = [aws_lb_target_group.web[0].arn]
  health_check_type         = "ELB" # replace instances whose /readyz fails, not only dead ones
  health_check_grace_period = var.health_check_grace_period
  # Installing compiles uWSGI: keep a booting instance's CPU out of the scaling average.
  default_instance_warmup = var.health_check_grace_period

  launch_template {
    id      = aws_launch_template.web[0].id
    version = aws_launch_template.web[0].latest_version
  }

  # A new launch template version (git_ref, settings) rolls through the group: new instances
  # first, old ones leave only after their replacements pass /readyz.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
    }
  }

  # default_tags skip Auto Scaling Groups; these tag the group and every instance it launches.
  dynamic "tag" {
    for_each = merge(local.tags, { Name = var.name })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The scaling policy owns the instance count after the first apply.
    ignore_changes = [desired_capacity]
  }
}

resource "aws_autoscaling_policy" "cpu" {
  count = local.scaled ? 1 : 0

  name                   = "${var.name}-cpu-target"
  autoscaling_group_name = aws_autoscaling_group.web[0].name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = var.cpu_target
  }
}
