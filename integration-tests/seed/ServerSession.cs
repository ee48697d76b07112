using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Text;
using System.Threading;

using ByteSegment = System.ArraySegment<byte>;

class ServerSession : Session
{
    // [test change] The pause between greetings; the seed's 1000 ms unless
    // ClientProgram is given another.
    public static int IntervalMs = 1000;

    private void Body()
    {
        for (int i = 0; i < 5; i++)
        {
            string str = $"Hi {i}";
            SendUTF8String(str);

            Thread.Sleep(IntervalMs);
        }
    }

    protected override void OnConnected(EndPoint endPoint)
    {
        Console.WriteLine($"Conntected To {endPoint}");

        Body();
    }

    protected override void OnDisconnected(EndPoint endPoint)
    {
        Console.WriteLine($"Disconntected From {endPoint}");
    }

    protected override void OnReceived(ByteSegment buffer)
    {
        string str = Encoding.UTF8.GetString(buffer.Array, buffer.Offset, buffer.Count);
        Console.WriteLine($"{GetTimeStamp()} From Server - Len : {buffer.Count},  String : {str}\n");
    }

    protected override void OnSent(ByteSegment buffer)
    {
        string str = Encoding.UTF8.GetString(buffer.Array, buffer.Offset, buffer.Count);
        Console.WriteLine($"{GetTimeStamp()} To Server : {str}");
    }
}
